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
Errors: {"error": CODE, "detail": one-line message} with a 4xx (503 `busy` when the decode queue is full).
The budgets are in serve_limits.py; the deadlines and the connection cap, which live below the app, in
http_guard.py. `create_app` or, for `uvicorn --factory` and gunicorn, `app_from_env` (the run named by
MNIST_CNN_RUN) builds the app; `serve` runs it with those guards.

FastAPI's /docs and /redoc are turned off: they load Swagger/ReDoc from a CDN, and this service
serves nothing from outside the package. The schema stays at /openapi.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any

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

from .decode_pool import DecodePool
from .errors import MnistCnnError
from .inputs import InputError, as_model_input
from .predict import describe
from .serve_limits import ServeLimits
from .sources import Openable, open_model

STATIC_DIR = Path(__file__).parent / "static"
MAX_IMAGES = 256  # per request, files or arrays: bounds the work one request can ask for

STATUS = {"body_too_large": 413, "image_too_large": 413, "too_many_images": 413, "too_many_pixels": 413,
          "bad_json": 400, "request_timeout": 408, "unsupported_media_type": 415, "bad_content_length": 400,
          "busy": 503}  # others: 422


class ApiError(Exception):
    """A client mistake: turned into {"error": code, "detail": message} with its 4xx status."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class TopK(BaseModel):
    digit: int
    label: str | None = None
    probability: float


class Prediction(BaseModel):
    digit: int
    label: str | None = None
    probability: float
    top3: list[TopK]
    probabilities: list[float]
    file: str | None = None
    image: list[list[int]] | None = None


class ModelInfo(BaseModel):
    name: str
    run: str
    params: int
    test_accuracy: float | None = None
    classes: list[str] | None = None


class PredictResponse(BaseModel):
    model: ModelInfo
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    error: str
    detail: str


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` from Content-Length up front, and count the
    bytes actually received too (chunked bodies have no Content-Length; a header can lie). The time a
    body may take is the protocol's whole-request deadline (http_guard.py), not a limit per receive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                error = ApiError("bad_content_length", f"Content-Length {declared!r} is not a number")
                return await _error_response(error, scope, receive, send)
            if int(declared) > self.max_bytes:
                error = ApiError("body_too_large",
                                 f"request body of {int(declared)} bytes exceeds the limit of {self.max_bytes}")
                return await _error_response(error, scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
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
        raise ApiError("bad_request", f'value_range must be "unit" (floats 0..1) or "byte" (integers 0..255), got '
                                      f"{value_range!r}")
    if not isinstance(images, list) or not images:
        raise ApiError("bad_request", '"images" must be a non-empty list of 28x28 arrays')
    if len(images) > MAX_IMAGES:
        raise ApiError("too_many_images", f"{len(images)} images in one request; the limit is {MAX_IMAGES}")
    return torch.cat([_parse_array(image, value_range, f"images[{i}]") for i, image in enumerate(images)])


_CODES = {"type": "bad_shape", "shape": "bad_shape", "dtype": "bad_value", "range": "out_of_range"}


def _parse_array(image: Any, value_range: str, name: str) -> torch.Tensor:
    """One JSON image -> float32 [1, 1, 28, 28]: its declared value_range here, the array rule in inputs.py."""
    try:
        a = np.array(image)
    except (ValueError, RecursionError):  # ragged or absurdly deep nesting
        raise ApiError("bad_shape", f"{name} is not a rectangular array; expected 28x28") from None
    if a.shape != (28, 28):  # one image each, never a batch
        raise ApiError("bad_shape", f"{name} has shape {list(a.shape)}; expected [28, 28]")
    if a.dtype.kind not in "iuf":  # strings, booleans, nulls, nested objects
        raise ApiError("bad_value", f"{name} must hold numbers only")
    if value_range == "byte" and a.dtype.kind == "f":  # 3.0 is a byte, 0.5 is not
        if not (np.isfinite(a).all() and (a == np.round(a)).all()):
            raise ApiError("out_of_range", f'{name} has values in [{a.min():g}, {a.max():g}]; value_range "byte" '
                           "needs integers 0..255")
        a = np.clip(a, -1, 256).astype(np.int64)  # still out of range where it was
    try:
        return as_model_input(a.astype(np.float64) if value_range == "unit" else a, name=name)
    except InputError as e:
        hint = ' (send "value_range": "byte" for 0..255)' if value_range == "unit" and e.problem == "range" else ""
        raise ApiError(_CODES[e.problem], f"{e}{hint}") from None


def create_app(run: Openable, limits: ServeLimits | None = None, **overrides: Any) -> FastAPI:
    """The service for one trained run or ensemble (a Run, an EnsembleRun, or its directory), within `limits`
    (default: ServeLimits.from_env()); keywords replace single limits: create_app(run, max_body_bytes=10**6)."""
    limits = ServeLimits.from_env(**overrides) if limits is None else dataclasses.replace(limits, **overrides)
    run = open_model(run)
    model = run.model.cpu().eval()
    classes = run.classes
    info = ModelInfo(name=run.name, run=run.path.name if run.path is not None else "", params=run.num_params,
                     test_accuracy=run.metrics.get("accuracy"),
                     classes=list(classes) if classes else None)
    info_json = info.model_dump(exclude=None if classes else {"classes"})  # the digits' answer is as it was
    # One model instance behind a lock rather than micro-batching: one forward of this small CNN
    # takes about a millisecond, so batching would save little while adding a wait to every
    # request; the lock keeps concurrent requests from oversubscribing torch's intra-op threads
    # and from racing on module state. Decoding and preprocessing run outside the lock, on the decode pool.
    lock = threading.Lock()
    pool = DecodePool(limits.decode_threads, limits.decode_queue, limits.max_pixels, limits.max_request_pixels)

    def infer(x: torch.Tensor) -> np.ndarray:
        with lock, torch.inference_mode():
            return torch.softmax(model(x).float(), dim=1).numpy()

    async def predict_images(blobs: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        images = await pool.load_all(blobs)
        probabilities = await run_in_threadpool(infer, as_model_input(images, name="images"))
        return [{**describe(p, classes=classes), "file": name, "image": img.tolist()}
                for (name, _), p, img in zip(blobs, probabilities, images)]

    app = FastAPI(title="mnist-cnn", version="1", docs_url=None, redoc_url=None,
                  description="Handwritten digit recognition with a CNN trained on MNIST.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    _answer_errors_in_json(app)

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
              responses={c: {"model": ErrorResponse} for c in (400, 408, 413, 415, 422, 503)},
              openapi_extra=_REQUEST_BODY_DOC)
    async def predict(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            predictions = await predict_images(await _uploads(request))
        elif kind.startswith("image/") or kind == "application/octet-stream":
            predictions = await predict_images([("body", await request.body())])
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


def _answer_errors_in_json(app: FastAPI) -> None:
    """Every error the app can meet answers {"error": CODE, "detail": one line}, with its status."""

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


async def _uploads(request: Request) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file in a multipart body's field "file"."""
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
    return [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(uploads)]


_REQUEST_BODY_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "image file(s), any size and polarity"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "maxItems": MAX_IMAGES, "description": "28x28 arrays in MNIST form",
                   "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
        "value_range": {"type": "string", "enum": ["unit", "byte"], "default": "unit",
                        "description": "unit: floats 0..1; byte: integers 0..255"}}}}}}}


def app_from_env() -> FastAPI:
    """The app for `uvicorn --factory mnist_cnn.serve:app_from_env` or gunicorn: the run named by MNIST_CNN_RUN,
    within the limits set by MNIST_CNN_* variables (serve_limits.py)."""
    run_dir = os.environ.get("MNIST_CNN_RUN")
    if not run_dir:
        raise MnistCnnError("MNIST_CNN_RUN is not set: name the run or ensemble directory to serve")
    return create_app(run_dir)


def uvicorn_options(limits: ServeLimits) -> dict[str, Any]:
    """uvicorn.Config keywords that put the deadlines and the connection cap of `limits` in front of the app."""
    from .http_guard import guarded_protocol

    return {"http": guarded_protocol(limits), "timeout_keep_alive": limits.idle_timeout_s,
            "limit_concurrency": limits.max_connections}


def serve(run_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, *,
          log_level: str = "info", limits: ServeLimits | None = None) -> None:
    """Run the service with uvicorn until interrupted, one process (docs/serving.md: several, behind a proxy)."""
    import socket

    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MnistCnnError(f"--port must be an integer from 0 to 65535, got {port!r}")
    try:  # a taken port or an unknown host: say so in one line, not in uvicorn's log after loading the model
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise MnistCnnError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    limits = limits or ServeLimits.from_env()
    app = create_app(run_dir, limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level, **uvicorn_options(limits))
