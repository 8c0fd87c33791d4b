"""Figure routes: metadata, similar figures, and the stored image files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from figsearch.api.deps import (
    BaseUrlDep,
    DedupParam,
    FilterDep,
    KParam,
    OffsetParam,
    PinnedDep,
    SettingsDep,
    StateDep,
    StoreDep,
)
from figsearch.api.present import (
    figure_detail,
    figure_panels_payload,
    json_response,
    search_payload,
)
from figsearch.api.schemas import ErrorResponse, FigureDetail, FigurePanelsResponse, SearchResponse
from figsearch.imaging import ImageError, safe_image_path
from figsearch.panel_index import PANEL_SLOTS

router = APIRouter(prefix="/v1/figures", tags=["figures"])
FigureId = Annotated[int, PathParam(ge=1, le=2**62, description="Figure id.", examples=[1])]
PanelNumber = Annotated[int, PathParam(ge=1, le=PANEL_SLOTS - 1, examples=[1],
                                       description="1-based panel number (reading order).")]
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "No such figure"}}
#: Stored images are content-addressed (sha256 in the name), so they never change in place.
CACHE_CONTROL = "public, max-age=86400"


def _figure_or_404(store: Any, figure_id: int) -> dict[str, Any]:
    figure = store.get_figure(figure_id)
    if figure is None:
        raise HTTPException(404, f"no figure with id {figure_id}")
    return dict(figure)


@router.get("/{figure_id}", response_model=FigureDetail, responses=_404,
            summary="One figure with its article metadata and links")
def get_figure(
    figure_id: FigureId, store: StoreDep, state: StateDep, base_url: BaseUrlDep
) -> FigureDetail:
    figure = _figure_or_404(store, figure_id)
    loaded = state.current
    in_index = bool(loaded and loaded.index and loaded.index.contains(figure_id))
    return figure_detail(figure, base_url, in_index)


@router.get(
    "/{figure_id}/similar", response_model=SearchResponse,
    responses={**_404, 400: {"model": ErrorResponse, "description": "Bad filter"},
               409: {"model": ErrorResponse,
                     "description": "The served index version has no image index"},
               410: {"model": ErrorResponse,
                     "description": "`version` names a pruned version (the kept ones are "
                                    "named)"},
               503: {"model": ErrorResponse, "description": "No index loaded yet"}},
    summary="Figures that look like this one",
    description="Nearest neighbours of the figure's stored embedding; the figure itself and "
                "copies of its image are left out. Filters and paging as in /v1/search.",
)
def similar(
    figure_id: FigureId, loaded: PinnedDep, flt: FilterDep, base_url: BaseUrlDep,
    k: KParam = 20, offset: OffsetParam = 0, dedup: DedupParam = True,
) -> Response:
    page = loaded.service.similar(figure_id, k=k, offset=offset, flt=flt, dedup=dedup)
    return json_response(search_payload(page, base_url, flt,
                                        path=f"/v1/figures/{figure_id}/similar", dedup=dedup))


def _image_file(
    request: Request, figure_id: int, store: Any, images_dir: Path, thumbnail: bool
) -> Response:
    figure = _figure_or_404(store, figure_id)
    rel = figure.get("thumb_path") if thumbnail else figure.get("image_path")
    if not figure.get("has_image") or not rel:
        raise HTTPException(404, f"figure {figure_id} has no stored image")
    try:
        path = safe_image_path(images_dir, str(rel))
    except ImageError as exc:
        raise HTTPException(404, f"figure {figure_id}: image not available ({exc})") from exc
    if not path.is_file():
        raise HTTPException(404, f"figure {figure_id}: image file is missing from the data dir")
    etag = f'"{figure.get("sha256") or path.stem}{"-thumb" if thumbnail else ""}"'
    headers, unchanged = _cached(request, etag)
    return unchanged or FileResponse(path, media_type="image/jpeg", headers=headers)


def _cached(request: Request, etag: str) -> tuple[dict[str, str], Response | None]:
    """The caching headers of an image response with this ETag, and the 304 answer when the
    client already holds it (If-None-Match), else None."""
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return headers, Response(status_code=304, headers=headers)
    return headers, None


_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_404, 200: {"content": {"image/jpeg": {}}, "description": "JPEG image"},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
}


@router.get("/{figure_id}/image", response_class=FileResponse, responses=_IMAGE_RESPONSES,
            summary="The stored figure image (JPEG, long side <= image_max_side)")
def get_image(
    request: Request, figure_id: FigureId, store: StoreDep, settings: SettingsDep
) -> Response:
    return _image_file(request, figure_id, store, settings.images_dir, thumbnail=False)


@router.get("/{figure_id}/thumbnail", response_class=FileResponse, responses=_IMAGE_RESPONSES,
            summary="The figure's thumbnail (JPEG, long side <= thumb_max_side)")
def get_thumbnail(
    request: Request, figure_id: FigureId, store: StoreDep, settings: SettingsDep
) -> Response:
    return _image_file(request, figure_id, store, settings.images_dir, thumbnail=True)


def _panels_or_404(store: Any, figure_id: int) -> tuple[dict[str, Any], list[Any]]:
    """The figure's row and aligned panels; 404 saying why when it has none."""
    figure = _figure_or_404(store, figure_id)
    if not figure.get("has_image") or not figure.get("image_path"):
        raise HTTPException(404, f"figure {figure_id} has no stored image, so no panels")
    panels = store.figure_panels(figure_id)
    if panels is None:
        raise HTTPException(404, f"figure {figure_id}: its panels are not computed yet (or its "
                                 "image is unreadable); `figsearch index` splits new images")
    return figure, panels


@router.get("/{figure_id}/panels", response_model=FigurePanelsResponse, responses=_404,
            summary="The panels of a figure (boxes, letters, sub-captions, crop URLs)")
def get_panels(figure_id: FigureId, store: StoreDep, base_url: BaseUrlDep) -> Response:
    figure, panels = _panels_or_404(store, figure_id)
    return json_response(figure_panels_payload({**figure, "id": figure_id}, panels, base_url))


@router.get("/{figure_id}/panels/{number}/image", response_class=Response,
            responses=_IMAGE_RESPONSES,
            summary="One panel cut from the stored figure image (JPEG, the box's size)")
def get_panel_image(
    request: Request, figure_id: FigureId, number: PanelNumber, store: StoreDep,
    settings: SettingsDep,
) -> Response:
    figure, panels = _panels_or_404(store, figure_id)
    if number > len(panels):
        raise HTTPException(404, f"figure {figure_id} has {len(panels)} panel"
                                 f"{'s' if len(panels) != 1 else ''}; there is no panel {number}")
    x0, y0, x1, y1 = (int(v) for v in panels[number - 1].box)
    box = (x0, y0, x1, y1)
    etag = f'"{figure.get("sha256")}-panel-{"-".join(map(str, box))}"'
    headers, unchanged = _cached(request, etag)
    if unchanged is not None:
        return unchanged
    jpeg = _crop_jpeg(settings.images_dir, figure_id, str(figure["image_path"]), box)
    return Response(jpeg, media_type="image/jpeg", headers=headers)


def _crop_jpeg(images_dir: Path, figure_id: int, rel: str,
               box: tuple[int, int, int, int]) -> bytes:
    """The box cut from the stored image, as JPEG bytes (404 when the file is gone)."""
    import io

    from PIL import Image

    try:
        path = safe_image_path(images_dir, rel)
        with Image.open(path) as image:
            crop = image.convert("RGB").crop(box)
    except (ImageError, OSError) as exc:
        raise HTTPException(404, f"figure {figure_id}: image not available ({exc})") from exc
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
