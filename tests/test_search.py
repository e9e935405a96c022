"""Search modes and filters on a small synthetic collection, against exact numpy references."""

from __future__ import annotations


import numpy as np
import pytest

from dermground.platform.embed import Embedder
from dermground.platform.embedder_provider import EmbedderProvider
from dermground.platform.search import search
from dermground.platform.search_request import (
    ModelUnavailableError,
    QueryNotFoundError,
    SearchError,
    SearchMode,
    SearchRequest,
)
from dermground.platform.settings import Settings
from dermground.platform.store import Range, SearchFilter, point_id
from dermground.platform.store.edge import EdgeStore
from tests.store_copies import copy_store

AREA = "areaMM2"


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("search_home"), max_k=100, max_b=500)


@pytest.fixture(scope="module")
def store(search_collection):
    with EdgeStore(search_collection["store_root"], "lesions") as opened:
        yield opened


@pytest.fixture(scope="module")
def provider(tiny_backbone) -> EmbedderProvider:
    return EmbedderProvider.of(Embedder(tiny_backbone))


@pytest.fixture(scope="module")
def data(search_collection):
    records = search_collection["records"]
    return {"ids": [r.isic_id for r in records], "records": records, "emb": search_collection["embeddings"],
            "query_image": records[0].load_image()}


def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=-1, keepdims=True)


def _rank(matrix: np.ndarray, query: np.ndarray, ids: list[str], k: int, keep=None) -> list[str]:
    scores = _unit(matrix) @ _unit(query)
    order = [i for i in np.argsort(-scores, kind="stable") if keep is None or keep(i)]
    return [ids[i] for i in order[:k]]


def _ids(response) -> list[str]:
    return [h.isic_id for h in response.hits]


def _copy(root, tmp_path):
    target = tmp_path / "copy" / "lesions"
    return copy_store(root, target)


def test_image_mode_by_upload_equals_brute_force_on_h_im(store, provider, settings, data) -> None:
    response = search(SearchRequest(SearchMode.image, image=data["query_image"], k=7), store=store,
                      embedder=provider, settings=settings)
    assert _ids(response) == _rank(data["emb"].h_im, data["emb"].h_im[0], data["ids"], 7)
    assert response.model_ran and response.hits[0].isic_id == data["ids"][0]
    assert response.hits[0].attributes[AREA] == pytest.approx(data["records"][0].attributes[AREA])


def test_image_text_by_upload_equals_brute_force_on_h_im_a(store, provider, settings, data) -> None:
    response = search(SearchRequest(SearchMode.image_text, attributes=(AREA,), image=data["query_image"], k=5),
                      store=store, embedder=provider, settings=settings)
    matrix = data["emb"].h_im_a[AREA]
    assert _ids(response) == _rank(matrix, matrix[0], data["ids"], 5)
    assert [h.score for h in response.hits] == sorted((h.score for h in response.hits), reverse=True)


def test_isic_id_query_reuses_stored_vectors_without_a_model(store, settings, data) -> None:
    query_id = data["ids"][3]
    for mode, attrs in [(SearchMode.image, ()), (SearchMode.image_text, (AREA,)), (SearchMode.prefetch, (AREA,)),
                        (SearchMode.hierarchical, (AREA,))]:
        response = search(SearchRequest(mode, attributes=attrs, isic_id=query_id, k=5, b=20), store=store,
                          embedder=None, settings=settings)
        assert not response.model_ran, mode
        assert query_id not in _ids(response), "the query point itself is excluded by default"
        assert len(response.hits) == 5
        assert response.query_attributes[AREA] == pytest.approx(data["records"][3].attributes[AREA])
    matrix = data["emb"].h_im_a[AREA]
    response = search(SearchRequest(SearchMode.image_text, attributes=(AREA,), isic_id=query_id, k=5), store=store,
                      embedder=None, settings=settings)
    assert _ids(response) == _rank(matrix, matrix[3], data["ids"], 5, keep=lambda i: i != 3)


def test_hierarchical_with_b_equal_collection_size_equals_brute_force(search_collection, tmp_path, provider,
                                                                        settings, data) -> None:
    n = len(data["ids"])
    # The image-only collection forces re-embedding of every candidate, as in the paper.
    with EdgeStore(_copy(search_collection["image_only_root"], tmp_path), "lesions") as image_only:
        response = search(SearchRequest(SearchMode.hierarchical, attributes=(AREA,), image=data["query_image"],
                                        k=10, b=n), store=image_only, embedder=provider, settings=settings)
    brute = Embedder(provider.embedder().backbone).embed([r.load_image() for r in data["records"]], [AREA],
                                                         include_image=False).h_im_a[AREA]
    assert response.reembedded == n and response.candidates == n
    assert _ids(response) == _rank(brute, brute[0], data["ids"], 10)


def test_hierarchical_small_b_ranks_only_the_image_top_b(store, provider, settings, data) -> None:
    b = 8
    response = search(SearchRequest(SearchMode.hierarchical, attributes=(AREA,), image=data["query_image"], k=5, b=b),
                      store=store, embedder=provider, settings=settings)
    top_b = _rank(data["emb"].h_im, data["emb"].h_im[0], data["ids"], b)
    positions = [data["ids"].index(i) for i in top_b]
    matrix = data["emb"].h_im_a[AREA]
    expected = _rank(matrix[positions], matrix[0], top_b, 5)
    assert _ids(response) == expected and response.reembedded == 0  # the full collection stores q_<a>


def test_cached_hierarchical_writes_vectors_and_keeps_the_ranking(search_collection, tmp_path, provider,
                                                                   settings, data) -> None:
    request = SearchRequest(SearchMode.hierarchical, attributes=(AREA,), image=data["query_image"], k=5, b=12,
                            cache_vectors=True)
    with EdgeStore(_copy(search_collection["image_only_root"], tmp_path), "lesions") as image_only:
        cold = search(request, store=image_only, embedder=provider, settings=settings)
        warm = search(request, store=image_only, embedder=provider, settings=settings)
        assert cold.reembedded == 12 and cold.cached == 12
        assert warm.reembedded == 0 and warm.cached == 0
        assert _ids(warm) == _ids(cold)
        assert [h.score for h in warm.hits] == pytest.approx([h.score for h in cold.hits], abs=1e-5)
        stored = image_only.retrieve([point_id(i) for i in _ids(cold)], with_vectors=[f"q_{AREA}"])
        assert all(f"q_{AREA}" in p.vectors for p in stored)
        # Candidates outside the top-b were never embedded, so nothing was written for them.
        assert image_only.count() == len(data["ids"])
        # By isic_id on an image-only collection the query's own vectors are embedded once, then cached too.
        by_id = SearchRequest(SearchMode.hierarchical, attributes=(AREA,), isic_id=data["ids"][5], k=5, b=12,
                              cache_vectors=True)
        first = search(by_id, store=image_only, embedder=provider, settings=settings)
        again = search(by_id, store=image_only, embedder=provider, settings=settings)
        assert first.model_ran and first.cached >= 1
        assert not again.model_ran and again.cached == 0 and _ids(again) == _ids(first)


def test_hierarchical_on_image_only_collection_without_model_says_so(search_collection, tmp_path, settings,
                                                                     data) -> None:
    with EdgeStore(_copy(search_collection["image_only_root"], tmp_path), "lesions") as image_only:
        with pytest.raises(ModelUnavailableError, match="needs the model"):
            search(SearchRequest(SearchMode.hierarchical, attributes=(AREA,), isic_id=data["ids"][0], k=5, b=10),
                   store=image_only, embedder=None, settings=settings)


def test_prefetch_equals_numpy_reference(store, provider, settings, data) -> None:
    b = 10
    response = search(SearchRequest(SearchMode.prefetch, attributes=(AREA,), image=data["query_image"], k=4, b=b),
                      store=store, embedder=provider, settings=settings)
    top_b = _rank(data["emb"].h_im, data["emb"].h_im[0], data["ids"], b)
    matrix = data["emb"].h_im_a[AREA]
    positions = [data["ids"].index(i) for i in top_b]
    assert _ids(response) == _rank(matrix[positions], matrix[0], top_b, 4)


@pytest.mark.parametrize("mode", [SearchMode.image_text, SearchMode.hierarchical, SearchMode.prefetch])
def test_multi_attribute_fusion_is_the_mean_of_cosines(store, provider, settings, data, mode) -> None:
    attrs = (AREA, "norm_color", "deltaL")
    n = len(data["ids"])
    response = search(SearchRequest(mode, attributes=attrs, image=data["query_image"], k=6, b=n), store=store,
                      embedder=provider, settings=settings)
    mean = np.mean([_unit(data["emb"].h_im_a[a]) @ _unit(data["emb"].h_im_a[a][0]) for a in attrs], axis=0)
    expected = [data["ids"][i] for i in np.argsort(-mean, kind="stable")[:6]]
    assert _ids(response) == expected
    assert response.hits[0].score == pytest.approx(float(np.mean(list(response.hits[0].attribute_scores.values()))))
    assert set(response.hits[0].attribute_scores) == set(attrs)


def test_filters_restrict_every_mode(store, provider, settings, data) -> None:
    areas = sorted(r.attributes[AREA] for r in data["records"])
    low, high = areas[5], areas[30]
    sexes = {r.metadata.get("sex") for r in data["records"]} - {None}
    sex = sorted(sexes)[0]
    flt = SearchFilter(split="train", any_of={"sex": [sex]}, ranges={AREA: Range(gte=low, lte=high)})
    expected_pool = [r for r in data["records"] if r.split == "train" and r.metadata.get("sex") == sex
                     and low <= r.attributes[AREA] <= high]
    assert expected_pool, "the fixture must leave something to find"
    for mode, attrs in [(SearchMode.image, ()), (SearchMode.image_text, (AREA,)), (SearchMode.prefetch, (AREA,)),
                        (SearchMode.hierarchical, (AREA,))]:
        response = search(SearchRequest(mode, attributes=attrs, image=data["query_image"], k=40, b=40, filter=flt),
                          store=store, embedder=provider, settings=settings)
        assert {h.isic_id for h in response.hits} == {r.isic_id for r in expected_pool}, mode
        for hit in response.hits:
            assert hit.payload["split"] == "train" and hit.payload["sex"] == sex
            assert low <= hit.attributes[AREA] <= high


def test_age_range_filter(store, settings, data) -> None:
    ages = sorted({r.metadata["age_approx"] for r in data["records"] if r.metadata.get("age_approx") is not None})
    cut = ages[len(ages) // 2]
    response = search(SearchRequest(SearchMode.image, isic_id=data["ids"][0], k=40,
                                    filter=SearchFilter(ranges={"age_approx": Range(gte=cut)})),
                      store=store, embedder=None, settings=settings)
    expected = {r.isic_id for r in data["records"][1:] if (r.metadata.get("age_approx") or -1) >= cut}
    assert {h.isic_id for h in response.hits} == expected and expected


def test_exclude_query_patient_never_returns_the_query_patient(store, settings, data) -> None:
    for record in data["records"]:
        for mode, attrs in [(SearchMode.image, ()), (SearchMode.prefetch, (AREA,))]:
            response = search(SearchRequest(mode, attributes=attrs, isic_id=record.isic_id, k=40, b=40,
                                            exclude_query_patient=True),
                              store=store, embedder=None, settings=settings)
            assert response.hits, "other patients exist"
            assert all(h.payload["patient_id"] != record.patient_id for h in response.hits)
            others = sum(r.patient_id != record.patient_id for r in data["records"])
            assert len(response.hits) == others


def test_upload_exclude_patient_needs_the_patient(store, provider, settings, data) -> None:
    with pytest.raises(SearchError, match="query_patient_id"):
        search(SearchRequest(SearchMode.image, image=data["query_image"], exclude_query_patient=True),
               store=store, embedder=provider, settings=settings)
    patient = data["records"][0].patient_id
    response = search(SearchRequest(SearchMode.image, image=data["query_image"], k=40, exclude_query_patient=True,
                                    query_patient_id=patient), store=store, embedder=provider, settings=settings)
    assert response.hits and all(h.payload["patient_id"] != patient for h in response.hits)


@pytest.mark.parametrize("request_kwargs, message", [
    ({"k": 10**9}, "k must be between"),
    ({"k": 0}, "k must be between"),
    ({"mode": SearchMode.hierarchical, "attributes": (AREA,), "b": -1}, "b must be between"),
    ({"mode": SearchMode.image_text, "attributes": ("size_of_mole",)}, "unknown attribute"),
    ({"mode": SearchMode.image_text}, "needs at least one attribute"),
    ({"mode": SearchMode.image, "attributes": (AREA,)}, "takes no attributes"),
    ({"isic_id": None}, "exactly one query"),
])
def test_bad_requests_are_refused_with_a_reason(store, settings, data, request_kwargs, message) -> None:
    kwargs = {"isic_id": data["ids"][0]} | request_kwargs
    with pytest.raises(SearchError, match=message):
        search(SearchRequest(**kwargs), store=store, embedder=None, settings=settings)


def test_unknown_isic_id_is_not_found(store, settings) -> None:
    with pytest.raises(QueryNotFoundError, match="ISIC_9999999"):
        search(SearchRequest(SearchMode.image, isic_id="ISIC_9999999"), store=store, embedder=None, settings=settings)


def test_hierarchical_skips_a_candidate_whose_image_is_gone(search_collection, tmp_path, provider, settings,
                                                            data) -> None:
    with EdgeStore(_copy(search_collection["image_only_root"], tmp_path), "lesions") as image_only:
        lost = data["ids"][1]
        image_only.set_payload([point_id(lost)], {"image_ref": str(tmp_path / "missing.jpg")})
        response = search(SearchRequest(SearchMode.hierarchical, attributes=(AREA,), image=data["query_image"],
                                        k=40, b=40), store=image_only, embedder=provider, settings=settings)
    assert lost not in _ids(response) and len(response.hits) == len(data["ids"]) - 1
