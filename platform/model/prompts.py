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
