"""The chat prompt for [image, Q(a)], exactly as training and embedding use it.

The text is built here rather than by a tokenizer's chat template so that every checkpoint (the
tiny local one or a real Qwen2-VL) sees the same string; it equals the official Qwen2-VL template's
output. Any change to these strings must bump PROMPT_VERSION: it is part of every fingerprint.
"""

from __future__ import annotations

PROMPT_VERSION = "qwen2vl-chat-v1"

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
END_OF_TURN = "<|im_end|>"


def image_prefix() -> str:
    """The text shared by all 17 inputs of an image, ending at <|vision_end|> (the KV-reuse boundary).

    The processor expands the single <|image_pad|> into one token per merged image patch.
    """
    return f"<|im_start|>system\n{SYSTEM_PROMPT}{END_OF_TURN}\n<|im_start|>user\n{IMAGE_PLACEHOLDER}"


def question_suffix(question: str) -> str:
    """What follows the image for one question, generation prompt included."""
    return f"{question}{END_OF_TURN}\n<|im_start|>assistant\n"


def build_prompt(question: str) -> str:
    """The full prompt for [image, Q(a)] up to where the answer starts."""
    return image_prefix() + question_suffix(question)


def build_training_text(question: str, answer: str) -> str:
    """Prompt + answer + <|im_end|>: the completion training maximises the likelihood of."""
    return build_prompt(question) + answer + END_OF_TURN


# The official Qwen2-VL chat template (image counting omitted); used by the tiny tokenizer so that
# `apply_chat_template` produces exactly build_prompt() (a test checks it).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    + SYSTEM_PROMPT
    + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --- multi-attribute questions (paper's future work; used by training behind a flag and by search) ---
MULTI_ANSWER_SEPARATOR = "; "


def multi_attribute_question(names: list[str] | tuple[str, ...]) -> str:
    """One question about several attributes, asking for a fixed `name=value; name=value` answer."""
    from dermground.platform.attributes import get_attribute

    questions = " ".join(get_attribute(n).question for n in names)
    return f"{questions} Answer as {MULTI_ANSWER_SEPARATOR.join(f'{n}=value' for n in names)}."


def format_multi_answer(values: dict[str, float]) -> str:
    """The answer to multi_attribute_question, in the question's order: "areaMM2=12.3; norm_border=4.56"."""
    from dermground.platform.attributes import get_attribute

    return MULTI_ANSWER_SEPARATOR.join(f"{n}={get_attribute(n).format_value(v)}" for n, v in values.items())


def parse_multi_answer(text: str, names: list[str] | tuple[str, ...]) -> dict[str, float | None]:
    """Values of a multi-attribute answer by name (None where a part is missing or not a valid number)."""
    from dermground.platform.attributes import get_attribute

    found: dict[str, str] = {}
    for part in text.split(MULTI_ANSWER_SEPARATOR.strip()):
        key, sep, value = part.strip().partition("=")
        if sep:
            found[key.strip()] = value
    return {n: (get_attribute(n).parse_value(found[n]) if n in found else None) for n in names}
