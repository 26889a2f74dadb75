"""POST /v1/search."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from api.deps import State
from api.schemas import errors
from shared.ingest.validate import COLLECTION_NAME
from shared.search import Mode, SearchParams, search

router = APIRouter(prefix="/v1", tags=["search"], responses=errors(401, 404, 413, 422, 503))

MAX_QUERY_CHARS = 2000
MAX_FILTER_KEYS = 16
MAX_FILTER_VALUES = 64
MAX_FILTER_KEY_CHARS = 256

# Every limit the schema can state is stated there; the API refuses nothing else.
FilterScalar = str | int | Annotated[float, Field(allow_inf_nan=False)] | bool
FilterKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_FILTER_KEY_CHARS)]
FilterValues = Annotated[list[FilterScalar], Field(min_length=1, max_length=MAX_FILTER_VALUES)]
Filter = Annotated[dict[FilterKey, FilterScalar | FilterValues], Field(max_length=MAX_FILTER_KEYS)]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S"),
        Field(description="The question or keywords, in Japanese or otherwise"),
    ]
    collection: Annotated[str, StringConstraints(pattern=COLLECTION_NAME.pattern)] = "default"
    top_k: int = Field(10, ge=1, le=100)
    mode: Mode = "hybrid"
    filter: Filter | None = Field(
        None, description="Metadata equality per key; a list means any of its values"
    )

    # The constraints above go into the schema; these say in words what a client got wrong,
    # before the type checks answer in pydantic's.
    @field_validator("query", mode="before")
    @classmethod
    def _query_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("query is empty or only whitespace")
            if len(v) > MAX_QUERY_CHARS:
                raise ValueError(f"query is longer than {MAX_QUERY_CHARS} characters")
            # A lone surrogate has no UTF-8 form; as a replacement character it matches nothing.
            return v.encode("utf-8", "replace").decode("utf-8")
        return v

    @field_validator("filter", mode="before")
    @classmethod
    def _filter_shape(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        if len(v) > MAX_FILTER_KEYS:
            raise ValueError(f"filter has {len(v)} keys, at most {MAX_FILTER_KEYS} are allowed")
        for key, value in v.items():
            if isinstance(key, str) and len(key) > MAX_FILTER_KEY_CHARS:
                raise ValueError(f"filter key is longer than {MAX_FILTER_KEY_CHARS} characters")
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
        return v


class Hit(BaseModel):
    id: str = Field(description="The document's id")
    title: str
    text: str = Field(description="The document's best-matching chunk")
    chunk: int = Field(description="That chunk's ordinal in the document")
    page: int | None = Field(
        None, description="The chunk's page (1-based) in a paged file (PDF); else null"
    )
    score: float = Field(description="Ranking score: higher is better; scales differ by mode")
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[Hit]
    took_ms: float
    mode: Mode
    model: str = Field(description="The embedding model the search used: the active one")


@router.post("/search", summary="Vector, lexical or hybrid search over a collection")
async def search_route(st: State, body: SearchRequest) -> SearchResponse:
    params = SearchParams(body.query, body.collection, body.top_k, body.mode, body.filter)
    served = st.served  # one model for the whole request, whatever a switch does meanwhile
    found = await search(
        st.pool, served.embedder, served.table, st.settings, params, st.collections
    )
    return SearchResponse.model_validate(found | {"model": served.table.model})
