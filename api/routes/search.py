"""POST /v1/search."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.deps import state_of
from shared.search import FilterValue, Mode, SearchParams, search

router = APIRouter(prefix="/v1", tags=["search"])

MAX_QUERY_CHARS = 2000
MAX_FILTER_KEYS = 16
MAX_FILTER_VALUES = 64
MAX_FILTER_KEY_CHARS = 256


def _check_string(value: str, what: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains an unpaired surrogate (not valid Unicode)") from None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., description="The question or keywords, in Japanese or otherwise")
    collection: str = "default"
    top_k: int = Field(10, ge=1, le=100)
    mode: Mode = "hybrid"
    filter: dict[str, FilterValue | list[FilterValue]] | None = Field(
        None, description="Metadata equality per key; a list means any of its values"
    )

    @field_validator("query")
    @classmethod
    def _query_text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query is empty or only whitespace")
        if len(v) > MAX_QUERY_CHARS:
            raise ValueError(f"query is longer than {MAX_QUERY_CHARS} characters")
        _check_string(v, "query")
        return v

    @field_validator("filter")
    @classmethod
    def _filter_lists(
        cls, v: dict[str, FilterValue | list[FilterValue]] | None
    ) -> dict[str, FilterValue | list[FilterValue]] | None:
        if v and len(v) > MAX_FILTER_KEYS:
            raise ValueError(f"filter has {len(v)} keys, at most {MAX_FILTER_KEYS} are allowed")
        for key, value in (v or {}).items():
            if len(key) > MAX_FILTER_KEY_CHARS:
                raise ValueError(f"filter key is longer than {MAX_FILTER_KEY_CHARS} characters")
            _check_string(key, "filter key")
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ValueError(f"filter value for {key!r} is an empty list")
            if len(values) > MAX_FILTER_VALUES:
                raise ValueError(
                    f"filter value for {key!r} lists {len(values)} values, at most "
                    f"{MAX_FILTER_VALUES} are allowed"
                )
            for item in values:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"filter value for {key!r} is not a finite number")
                if isinstance(item, str):
                    _check_string(item, f"filter value for {key!r}")
        return v


class Hit(BaseModel):
    id: str = Field(description="The document's id")
    title: str
    text: str = Field(description="The document's best-matching chunk")
    chunk: int = Field(description="That chunk's ordinal in the document")
    score: float = Field(description="Ranking score: higher is better; scales differ by mode")
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[Hit]
    took_ms: float
    mode: Mode


@router.post("/search", summary="Vector, lexical or hybrid search over a collection")
async def search_route(request: Request, body: SearchRequest) -> SearchResponse:
    st = state_of(request)
    params = SearchParams(body.query, body.collection, body.top_k, body.mode, body.filter)
    found = await search(st.pool, st.embedder, st.table, st.settings, params, st.collections)
    return SearchResponse.model_validate(found)
