"""The HTTP scoring service (FastAPI + uvicorn, extra ``serve``): the only module that imports them.

Endpoints (all ``/v1`` ones but ``/v1/health`` need ``Authorization: Bearer <token>`` unless the app is built with
``token=None``, which the CLI never does):

- ``POST /v1/predict``: patients -> calibrated probability, risk group, status (see :mod:`.schemas`);
- ``POST /v1/streams/{id}/events``, ``GET /v1/streams/{id}``, ``DELETE /v1/streams/{id}``: live streams
  (:mod:`.streams`);
- ``GET /v1/model``: the model card (:meth:`ScoringModel.info`); ``GET /v1/health``; ``GET /openapi.json``.

Errors are JSON ``{"detail": ...}``: 401 without a valid token, 413 for a body over ``max_body_bytes`` or more
than ``max_batch`` patients, 422 naming the field (``loc``) of invalid input, 404 for an unknown stream, 429 when
the stream limit is reached. Logs carry the route template, status and duration only: no identifiers (the access
log, which prints paths, is off), no values, never the token.
"""


import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from healthfusion.models.scoring import ScoringModel, load_model
from healthfusion.optional import require
from healthfusion.serve.patients import PatientError, Vocabulary, score_patients
from healthfusion.serve.schemas import Health, PredictRequest, PredictResponse, StreamEvents, StreamState
from healthfusion.serve.streams import AlertPolicy, StreamLimitError, StreamRegistry

log = logging.getLogger(__name__)

TOKEN_ENV = "HEALTHFUSION_API_TOKEN"


def _fastapi():
    fastapi = require("fastapi", extra="serve", needed_for="The scoring service")
    require("fastapi.responses", extra="serve", needed_for="The scoring service")
    return fastapi


def read_token(token_file: Path | None, environ: dict[str, str]) -> str:
    """The bearer token from ``token_file`` (first line, stripped) or else the ``HEALTHFUSION_API_TOKEN`` variable.

    Raises
    ------
    ValueError
        Neither is set, the file cannot be read, or the token is shorter than 16 characters.
    """
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as err:
            raise ValueError(f"Cannot read a token from --token-file {token_file}: {err or 'the file is empty'}.") \
                from None
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ValueError(f"No API token: set the environment variable {TOKEN_ENV} or pass --token-file PATH "
                             "(a file holding the token). Generate one with: python -c \"import secrets; "
                             "print(secrets.token_urlsafe(32))\"")
    if len(token) < 16:
        raise ValueError("The API token is shorter than 16 characters; use a long random token.")
    return token


def create_app(model: ScoringModel | str | Path, *, token: str | None, max_body_bytes: int = 5_000_000,
               max_batch: int = 1_000, max_streams: int = 10_000, tolerance: float = 1.0,
               policy: AlertPolicy | None = None, backend: str = "torch") -> Any:
    """The FastAPI app scoring with ``model`` (a loaded model, or its folder, loaded with ``load_model(model,
    backend)``: ``torch`` or ``onnx``; a loaded model keeps its own backend).

    ``token=None`` disables authentication (tests, or a caller behind its own gateway).

    Raises
    ------
    ModelLoadError
        The folder does not load.
    ValueError
        The model's label is not binary (the service returns probabilities and risk groups).
    ImportError
        FastAPI is not installed (with the install hint).
    """
    _fastapi()
    from fastapi import Depends, FastAPI, HTTPException, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    scoring = model if isinstance(model, ScoringModel) else load_model(model, backend=backend)
    if scoring.label.kind != "binary":
        raise ValueError(f"The service scores binary risk models; {scoring.path} predicts a {scoring.label.kind} "
                         f"label ({scoring.label.name!r}). Score it with healthfusion predict.")
    vocabulary = Vocabulary.of(scoring)
    streams = StreamRegistry(scoring, tolerance=tolerance, policy=policy, max_streams=max_streams)
    fingerprint = str(scoring.card.get("fingerprint", ""))
    app = FastAPI(title="healthfusion scoring service", version="1",
                  description=f"Scores patients with the {scoring.kind} model {fingerprint[:12]} "
                              f"({scoring.label.name}).")
    app.state.model, app.state.streams = scoring, streams

    def parse(schema: type[BaseModel], raw: bytes) -> Any:
        """The raw body validated once, straight from JSON (no intermediate dicts); errors as FastAPI's 422."""
        try:
            return schema.model_validate_json(raw)
        except ValidationError as err:
            errors = json.loads(err.json(include_url=False))
            raise RequestValidationError([{**e, "loc": ["body", *e["loc"]]} for e in errors]) from None

    def answer(result: BaseModel) -> Response:
        """A response serialised once from the validated result (no response-model re-validation)."""
        return Response(content=result.model_dump_json(), media_type="application/json")

    async def authorised(request: Request) -> None:  # async: a plain def would cost a thread hop per request
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "Missing or wrong bearer token: send 'Authorization: Bearer <token>'.",
                                headers={"WWW-Authenticate": "Bearer"})

    app.add_middleware(_LimitAndLog, max_body_bytes=max_body_bytes)

    @app.exception_handler(PatientError)
    async def patient_error(request: Request, exc: PatientError):
        parts = [int(x) if x.isdigit() else x for x in exc.field.replace("[", ".").replace("]", "").split(".") if x]
        return JSONResponse({"detail": [{"loc": ["body", *parts],
                                         "msg": exc.reason, "type": "value_error"}]}, status_code=422)

    @app.get("/v1/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", model=fingerprint, backend=scoring.backend, streams=len(streams))

    @app.get("/v1/model", dependencies=[Depends(authorised)])
    def model_card() -> dict:
        """The model card: kind, label, threshold, calibrator, data options, training summary, variables."""
        return scoring.info()

    def score(body: PredictRequest) -> Response:
        if len(body.patients) > max_batch:
            raise HTTPException(413, f"{len(body.patients)} patients in one request; the limit is {max_batch}. "
                                     "Split the batch.")
        return answer(PredictResponse(model=fingerprint, results=score_patients(scoring, body.patients, vocabulary,
                                                                                top_k=body.top_k)))

    @app.post("/v1/predict", dependencies=[Depends(authorised)], openapi_extra=_body(PredictRequest),
              responses={200: {"model": PredictResponse, "description": "One result per patient, in request order"}})
    async def predict(request: Request) -> Response:
        """Score one or more patients (at most the service's batch limit), each with its top ``top_k`` contributing
        features (signed, logit units, against a patient at the training means)."""
        body = parse(PredictRequest, await request.body())
        return await run_in_threadpool(score, body)  # off the event loop: /v1/health answers during a long batch

    def update(stream_id: str, body: StreamEvents) -> Response:
        try:
            return answer(streams.update(stream_id, body.events, body.static, body.now))
        except StreamLimitError as err:
            raise HTTPException(429, str(err)) from None

    @app.post("/v1/streams/{stream_id}/events", dependencies=[Depends(authorised)],
              openapi_extra=_body(StreamEvents), responses={200: {"model": StreamState, "description": "The state"}})
    async def stream_events(stream_id: str, request: Request) -> Response:
        """Add events to the stream ``stream_id`` (created on first use) and return its updated risk and alerts."""
        _check_id(stream_id)
        body = parse(StreamEvents, await request.body())
        return await run_in_threadpool(update, stream_id, body)

    @app.get("/v1/streams/{stream_id}", response_model=StreamState, dependencies=[Depends(authorised)])
    def stream_state(stream_id: str) -> StreamState:
        try:
            return streams.get(stream_id)
        except KeyError:
            raise HTTPException(404, "No such stream; post events to /v1/streams/{id}/events first.") from None

    @app.delete("/v1/streams/{stream_id}", status_code=204, dependencies=[Depends(authorised)])
    def stream_close(stream_id: str) -> None:
        try:
            streams.close(stream_id)
        except KeyError:
            raise HTTPException(404, "No such stream.") from None

    def _check_id(stream_id: str) -> None:
        if not (0 < len(stream_id) <= 128) or not all(c.isalnum() or c in "._:-" for c in stream_id):
            raise HTTPException(422, [{"loc": ["path", "stream_id"], "type": "value_error",
                                       "msg": "1-128 characters of letters, digits and . _ : -"}])

    schema = app.openapi

    def openapi() -> dict:  # the request bodies validated from raw JSON, declared in the schema's components
        if app.openapi_schema is None:
            components = schema().setdefault("components", {}).setdefault("schemas", {})
            for model in (PredictRequest, StreamEvents):
                spec = model.model_json_schema(ref_template=_REF + "{model}")
                for name, definition in {**spec.pop("$defs", {}), model.__name__: spec}.items():
                    components.setdefault(name, definition)
        return app.openapi_schema

    app.openapi = openapi
    return app


_REF = "#/components/schemas/"


class _LimitAndLog:
    """Plain ASGI middleware: 413 for a body over ``max_body_bytes`` (by its Content-Length, or counted as it
    arrives for a chunked upload), and one log line per request with the route template, status and duration (no
    path: stream paths hold identifiers). Plain ASGI rather than ``@app.middleware("http")``, whose request and
    response wrapping cost about a millisecond per request."""

    def __init__(self, app: Any, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._too_large(send_status, "; send fewer patients or events per request.")
        elif length is None and scope["method"] in ("POST", "PUT", "PATCH"):  # chunked: count what arrives
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False) and size <= self.max_body_bytes
            if size > self.max_body_bytes:
                await self._too_large(send_status, ".")
            else:
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

                async def receive_again() -> dict:
                    return replay.pop() if replay else await receive()

                await self.app(scope, receive_again, send_status)
        else:
            await self.app(scope, receive, send_status)
        route = scope.get("route")
        log.info("%s %s -> %d in %.1f ms", scope["method"], getattr(route, "path", "?"), status[0],
                 (time.perf_counter() - start) * 1000)

    async def _too_large(self, send: Any, advice: str) -> None:
        body = json.dumps({"detail": f"Request body over the limit of {self.max_body_bytes} bytes{advice}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of an endpoint that validates its raw body with ``model`` itself."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": _REF + model.__name__}}}}}


def serve(model_dir: ScoringModel | str | Path, *, token: str, host: str = "127.0.0.1", port: int = 8000,
          **limits) -> None:
    """Load the model (unless given loaded), build the app and run it with uvicorn until interrupted (access log off: paths hold ids).

    Raises
    ------
    ImportError
        uvicorn or FastAPI is not installed (with the install hint).
    """
    uvicorn = require("uvicorn", extra="serve", needed_for="The scoring service")
    app = create_app(model_dir, token=token, **limits)
    log.info("Serving on http://%s:%d", host, port)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
