"""HTTP service: `POST /v1/predict`, `GET /healthz`, and a drawing page at `/` (no external URLs).

POST /v1/predict accepts one of:
  * multipart/form-data with one or more files in the field "file" (PNG, JPEG, GIF, BMP, TIFF,
    WebP, PPM; any size up to the pixel limit, any polarity): each is preprocessed the MNIST way
    and the response carries the 28x28 image the model saw (`image`, uint8 rows);
  * a raw image body (Content-Type image/* or application/octet-stream), treated like one file;
  * application/json `{"images": [A, ...], "value_range": "unit" | "byte"}` where each A is a
    28x28 nested list already in MNIST form (white ink on black, centred). "unit" (the default):
    floats in [0, 1], fed to the model as they are; "byte": integers in 0..255, divided by 255.
    Values outside the declared range are refused, not clipped. At most MAX_IMAGES per request.
The response: {"model": {name, run, params, test_accuracy, classes?}, "predictions": [{digit, label?,
probability, top3, probabilities, image?}]}: `digit` is the class index; a run whose classes are named
(letters, folder names) adds `label`, the class's name, and the model's `classes`.
Errors: {"error": CODE, "detail": one-line message} with a 4xx.

FastAPI's /docs and /redoc are turned off: they load Swagger/ReDoc from a CDN, and this service
serves nothing from outside the package. The schema stays at /openapi.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .ensemble import EnsembleRun, load_model
from .errors import MnistCnnError
from .predict import describe, to_model_input
from .preprocess import MAX_PIXELS, load_image
from .runs import Run

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 10 * 1024 * 1024  # a phone photo fits; anything bigger is refused while reading
MAX_IMAGES = 256  # per request, files or arrays: bounds the work one request can ask for
BODY_TIMEOUT_S = 30.0  # a client that stops sending mid-body is cut off, not waited on forever

STATUS = {"body_too_large": 413, "image_too_large": 413, "too_many_images": 413, "bad_json": 400,
          "body_timeout": 408, "unsupported_media_type": 415, "bad_content_length": 400}  # others: 422


class ApiError(Exception):
    """A client mistake: turned into {"error": code, "detail": message} with its 4xx status."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class TopK(BaseModel):
    digit: int
    label: Optional[str] = None
    probability: float


class Prediction(BaseModel):
    digit: int
    label: Optional[str] = None
    probability: float
    top3: list[TopK]
    probabilities: list[float]
    file: Optional[str] = None
    image: Optional[list[list[int]]] = None


class ModelInfo(BaseModel):
    name: str
    run: str
    params: int
    test_accuracy: Optional[float] = None
    classes: Optional[list[str]] = None


class PredictResponse(BaseModel):
    model: ModelInfo
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    error: str
    detail: str


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` from Content-Length up front, and count the
    bytes actually received too (chunked bodies have no Content-Length; a header can lie)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _error_response(ApiError("bad_content_length", f"Content-Length {declared!r} is not a number"), scope, receive, send)
            if int(declared) > self.max_bytes:
                return await _error_response(ApiError("body_too_large", f"request body of {int(declared)} bytes exceeds the limit of {self.max_bytes}"), scope, receive, send)
        received, done = 0, False

        async def limited() -> Message:
            nonlocal received, done
            if done:  # after the body, receive() only waits for a disconnect: no timeout there
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise ApiError("body_timeout", f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise ApiError("body_too_large", f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


async def _error_response(e: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    await _error_json(e)(scope, receive, send)


def _error_json(e: ApiError) -> JSONResponse:
    return JSONResponse({"error": e.code, "detail": e.detail}, status_code=STATUS.get(e.code, 422))


def _parse_arrays(payload: Any) -> torch.Tensor:
    """The JSON form -> float32 [N, 1, 28, 28] in [0, 1]; every check names the offending image."""
    if not isinstance(payload, dict) or "images" not in payload:
        raise ApiError("bad_request", 'JSON body must be an object with an "images" list of 28x28 arrays')
    images, value_range = payload["images"], payload.get("value_range", "unit")
    if value_range not in ("unit", "byte"):
        raise ApiError("bad_request", f'value_range must be "unit" (floats 0..1) or "byte" (integers 0..255), got {value_range!r}')
    if not isinstance(images, list) or not images:
        raise ApiError("bad_request", '"images" must be a non-empty list of 28x28 arrays')
    if len(images) > MAX_IMAGES:
        raise ApiError("too_many_images", f"{len(images)} images in one request; the limit is {MAX_IMAGES}")
    out = np.empty((len(images), 28, 28), dtype=np.float32)
    for i, image in enumerate(images):
        try:
            a = np.array(image)
        except (ValueError, RecursionError):  # ragged or absurdly deep nesting
            raise ApiError("bad_shape", f"images[{i}] is not a rectangular array; expected 28x28") from None
        if a.shape != (28, 28):
            raise ApiError("bad_shape", f"images[{i}] has shape {list(a.shape)}; expected [28, 28]")
        if a.dtype.kind not in "iuf":  # strings, booleans, nulls, nested objects
            raise ApiError("bad_value", f"images[{i}] must hold numbers only")
        a = a.astype(np.float64)
        if value_range == "unit":
            if not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
                raise ApiError("out_of_range", f"images[{i}] has values in [{a.min():g}, {a.max():g}]; value_range "
                               '"unit" needs [0, 1] (send "value_range": "byte" for 0..255)')
            out[i] = a
        else:
            if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 255 and (a == np.round(a)).all()):
                raise ApiError("out_of_range", f"images[{i}] has values in [{a.min():g}, {a.max():g}]; value_range "
                               '"byte" needs integers 0..255')
            out[i] = a / 255.0
    return torch.from_numpy(out).unsqueeze(1)


def create_app(run: Union[Run, EnsembleRun, str, os.PathLike[str]], *, max_body_bytes: int = MAX_BODY_BYTES,
               max_pixels: int = MAX_PIXELS, body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """The service for one trained run or ensemble (a Run, an EnsembleRun, or its directory)."""
    run = load_model(run)
    model = run.model.cpu().eval()
    classes = getattr(run, "classes", None)
    info = ModelInfo(name=run.name, run=run.path.name, params=run.num_params,
                     test_accuracy=run.metrics.get("accuracy"), classes=classes)
    info_json = info.model_dump(exclude=None if classes else {"classes"})  # the digits' answer is as it was
    # One model instance behind a lock rather than micro-batching: one forward of this small CNN
    # takes about a millisecond, so batching would save little while adding a wait to every
    # request; the lock keeps concurrent requests from oversubscribing torch's intra-op threads
    # and from racing on module state. Decoding and preprocessing run outside the lock, in parallel.
    lock = threading.Lock()
    # Decoding a large upload can take ~100 MB; more decodes at once than cores gains no speed,
    # so a semaphore bounds the memory that a burst of large uploads can claim.
    decode_slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    def decode(name: str, data: bytes) -> np.ndarray:
        with decode_slots:
            return load_image(data, name=name, max_pixels=max_pixels)

    def infer(x: torch.Tensor) -> np.ndarray:
        with lock, torch.inference_mode():
            return torch.softmax(model(x).float(), dim=1).numpy()

    def predict_images(blobs: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        images = np.stack([decode(name, data) for name, data in blobs])
        probabilities = infer(to_model_input(images))
        return [{**describe(p, classes=classes), "file": name, "image": img.tolist()}
                for (name, _), p, img in zip(blobs, probabilities, images)]

    app = FastAPI(title="mnist-cnn", version="1", docs_url=None, redoc_url=None,
                  description="Handwritten digit recognition with a CNN trained on MNIST.")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout_s=body_timeout_s)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return _error_json(e)

    @app.exception_handler(MnistCnnError)
    async def user_error(_: Request, e: MnistCnnError) -> JSONResponse:
        return _error_json(ApiError(getattr(e, "code", "bad_request"), str(e)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:  # 404, 405, bad multipart
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, e: ClientDisconnect) -> Response:  # no one to answer, nothing for the log
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, e: Exception) -> JSONResponse:  # a bug: still answer in JSON
        return JSONResponse({"error": "internal_error", "detail": f"{type(e).__name__}: {e}"}, status_code=500)

    @app.head("/", include_in_schema=False)
    @app.head("/healthz", include_in_schema=False)
    async def head() -> Response:  # what uptime monitors send
        return Response()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": info_json}

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses={c: {"model": ErrorResponse} for c in (400, 408, 413, 415, 422)},
              openapi_extra=_REQUEST_BODY_DOC)
    async def predict(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            try:
                form = await request.form(max_files=MAX_IMAGES, max_fields=MAX_IMAGES)
            except StarletteHTTPException as e:  # Starlette says "Too many files/fields" with a 400
                if "Too many" not in str(e.detail):
                    raise
                raise ApiError("too_many_images", f"more than {MAX_IMAGES} files or fields in one request; the "
                               f"limit is {MAX_IMAGES}") from None
            uploads = [f for f in form.getlist("file") if not isinstance(f, str)]
            if not uploads:
                raise ApiError("missing_file", 'multipart body has no file in the field "file"')
            blobs = [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(uploads)]
            predictions = await run_in_threadpool(predict_images, blobs)
        elif kind.startswith("image/") or kind == "application/octet-stream":
            predictions = await run_in_threadpool(predict_images, [("body", await request.body())])
        elif kind == "application/json":
            try:
                payload = json.loads(await request.body())
            except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
                raise ApiError("bad_json", f"body is not valid JSON ({str(e).splitlines()[0]})") from None
            x = _parse_arrays(payload)
            predictions = [describe(p, classes=classes) for p in await run_in_threadpool(infer, x)]
        else:
            raise ApiError("unsupported_media_type", f"Content-Type {kind or '(none)'!r} not accepted; send "
                           "multipart/form-data (field 'file'), an image/* body, or application/json")
        return {"model": info_json, "predictions": predictions}

    return app


_REQUEST_BODY_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "image file(s), any size and polarity"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "maxItems": MAX_IMAGES, "description": "28x28 arrays in MNIST form",
                   "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
        "value_range": {"type": "string", "enum": ["unit", "byte"], "default": "unit",
                        "description": "unit: floats 0..1; byte: integers 0..255"}}}}}}}


def serve(run_dir: Union[str, os.PathLike[str]], host: str = "127.0.0.1", port: int = 8000, *,
          log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted."""
    import socket

    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MnistCnnError(f"--port must be an integer from 0 to 65535, got {port!r}")
    try:  # a taken port or an unknown host: say so in one line, not in uvicorn's log after loading the model
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise MnistCnnError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    app = create_app(run_dir)
    # Short keep-alive and a concurrency cap (503 beyond it): idle or piled-up clients cannot pin the server.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5, limit_concurrency=256)
