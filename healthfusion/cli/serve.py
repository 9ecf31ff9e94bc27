"""``healthfusion serve MODEL_DIR``: the HTTP scoring service (extra ``serve``)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from healthfusion.cli.common import console, fail


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command()
    def serve(
        model_dir: Path = typer.Argument(..., help="Saved model folder (e.g. RUN_DIR/model)."),
        host: str = typer.Option("127.0.0.1", help="Address to bind; the default accepts local connections only."),
        port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
        token_file: Path | None = typer.Option(
            None, help="File whose first line is the bearer token; else the HEALTHFUSION_API_TOKEN variable."),
        max_body_bytes: int = typer.Option(5_000_000, min=1_000, help="Largest request body accepted (413 above)."),
        max_batch: int = typer.Option(1_000, min=1, help="Most patients in one /v1/predict request (413 above)."),
        max_streams: int = typer.Option(10_000, min=1, help="Most live streams open at once (429 above)."),
        tolerance: float = typer.Option(1.0, min=0.0, help="Hours a stream event may arrive late and still count."),
        cooldown: float = typer.Option(4.0, min=0.0, help="Hours between two alerts of one stream."),
        alert_at: float | None = typer.Option(None, min=0.0, max=1.0, help="Risk at which a stream alerts (default: "
                                              "the model's threshold; e.g. the threshold `healthfusion alerts` "
                                              "found for an alert budget). It re-arms 0.1 below."),
        backend: str = typer.Option("torch", help="What runs the network: torch, or onnx (onnxruntime; a hybrid "
                                                  "model over time series and static values, exported when the "
                                                  "service starts; extra 'onnx')."),
    ) -> None:
        """Serve a saved model over HTTP: POST /v1/predict, live streams under /v1/streams/{id}, GET /v1/model,
        GET /v1/health, the OpenAPI schema at /openapi.json and its docs at /docs.

        Every /v1 request but /v1/health needs 'Authorization: Bearer TOKEN'. The token is read from --token-file or
        the HEALTHFUSION_API_TOKEN environment variable, never from the command line, and is never logged.
        """
        from healthfusion.models.base import ModelLoadError
        from healthfusion.models.scoring import load_model
        from healthfusion.serve.app import read_token
        from healthfusion.serve.app import serve as run_service
        from healthfusion.serve.streams import AlertPolicy

        try:
            token = read_token(token_file, dict(os.environ))
            model = load_model(model_dir, backend=backend)
            console.print(f"Serving [bold]{model_dir}[/] ({model.kind}, {model.label.name}, {backend}) on "
                          f"http://{host}:{port} "
                          "(Ctrl-C stops)")
            run_service(model, token=token, host=host, port=port, max_body_bytes=max_body_bytes,
                        max_batch=max_batch, max_streams=max_streams, tolerance=tolerance,
                        policy=AlertPolicy(on=alert_at, cooldown=cooldown))
        except (ValueError, ModelLoadError, ImportError) as exc:
            fail(exc)

    @app.command()
    def replay(
        model_dir: Path = typer.Argument(..., help="Saved model folder (e.g. RUN_DIR/model)."),
        path: Path = typer.Option(..., help="Raw files of the model's source (e.g. a PhysioNet 2012 folder)."),
        n: int = typer.Option(20, min=1, help="Number of stays to replay (the first N of the source)."),
        step: float = typer.Option(1.0, min=0.01, help="Hours of patient time per stream update."),
        speed: float = typer.Option(0.0, min=0.0, help="Patient hours per wall-clock hour; 0 = as fast as possible."),
        url: str | None = typer.Option(None, help="A running service (e.g. http://127.0.0.1:8000); default: "
                                                  "replay in this process."),
        token_file: Path | None = typer.Option(
            None, help="With --url: file holding the bearer token; else the HEALTHFUSION_API_TOKEN variable."),
        out: Path | None = typer.Option(None, help="CSV of the per-stay results (alerts, final risk)."),
        alert_at: float | None = typer.Option(None, min=0.0, max=1.0, help="In-process replay: risk at which a "
                                              "stream alerts (default: the model's threshold); re-arms 0.1 below."),
        cooldown: float = typer.Option(4.0, min=0.0, help="In-process replay: hours between two alerts of a stay."),
    ) -> None:
        """Play the model's source records hour by hour into live streams and report the alerts they raise.

        The stays are read with the model's own reader options (prediction window etc.); each stay's events are
        sent in blocks of --step hours, and the stream rescored after each block.
        """
        from rich.progress import Progress

        from healthfusion.data.sources import get_source
        from healthfusion.models.base import ModelLoadError
        from healthfusion.models.scoring import load_model
        from healthfusion.serve.app import read_token
        from healthfusion.serve.patients import Vocabulary, cohort_patients
        from healthfusion.serve.replay import replay as run_replay
        from healthfusion.serve.streams import AlertPolicy

        try:
            model = load_model(model_dir)
            if not model.data_source:
                raise ValueError(f"{model_dir} does not record its data source; it cannot be replayed.")
            token = read_token(token_file, dict(os.environ)) if url else None
            cohort = get_source(model.data_source)(path, **model.data_options)
            ids = [str(s) for s in cohort.stay_ids[:n]]
            patients = cohort_patients(cohort, Vocabulary.of(model), ids)
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("Replaying stays", total=len(patients))
                frame = run_replay(model, patients, step=step, speed=speed, url=url, token=token,
                                   policy=AlertPolicy(on=alert_at, off=None if alert_at is None else max(0.0, alert_at - 0.1),
                                                      cooldown=cooldown),
                                   progress=lambda done, total: bar.update(task, completed=done))
        except (ValueError, ModelLoadError) as exc:
            fail(exc)
        alerted = int((frame["n_alerts"] > 0).sum())
        console.print(f"Replayed {len(frame)} stays ({int(frame['updates'].sum())} stream updates): "
                      f"{int(frame['n_alerts'].sum())} alerts in {alerted} stays.")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(out, index=False)
            console.print(f"Wrote {out}")
