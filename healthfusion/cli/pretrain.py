"""``healthfusion pretrain --config PRE.yaml`` and ``healthfusion models list|describe``: pretrained encoders."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from healthfusion.cli.common import OUT_OPTION, QUICK_OPTION, SET_OPTION, console, fail, load_config
from healthfusion.cli.render import print_frame

models_app = typer.Typer(help="Pretrained encoders in the local registry.", no_args_is_help=True)

_ROOT = typer.Option(None, "--root", help="Registry folder (default: $HEALTHFUSION_MODELS or ~/.healthfusion/models).")


def pretrain(
    config: Path = typer.Option(..., "--config", "-c", help="Pretraining configuration (YAML)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from the newest checkpoint "
                                "in the config's checkpoints: folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the encoder of the same name (or the non-empty "
                                   "--out folder), cleared once training has finished (default: refuse it)."),
    set_: list[str] | None = SET_OPTION,
    out: Path | None = OUT_OPTION,
    quick: bool = QUICK_OPTION,
) -> None:
    """Pretrain an encoder without labels (masked values, masked features/codes, or contrastive views) and save it.
    Device, mixed precision and the other training options are the config's training: section, as in train."""
    from healthfusion.workflows.pretrain import load_pretrain_config, run_pretraining

    try:
        loaded = load_config(load_pretrain_config, config, set_, out, quick)
        if overwrite:
            loaded = loaded.model_copy(update={"overwrite": True})
        result = run_pretraining(loaded, console=console, resume=resume)
    except ValueError as exc:
        fail(exc)
    card = result["card"]
    console.print(f"{card.objective}: best validation loss {card.metrics.get('val_loss')} "
                  f"(epoch {card.metrics.get('best_epoch')}) -> [bold]{result['path']}[/]")


@models_app.command("list")
def models_list(root: Path | None = _ROOT) -> None:
    """List the pretrained encoders of the registry."""
    import pandas as pd

    from healthfusion.models.registry import list_encoders, registry_root

    rows = list_encoders(root)
    if not rows:
        console.print(f"No pretrained encoders in {registry_root(root)}.")
        return
    print_frame(console, pd.DataFrame(rows).drop(columns=["path"]), title=f"Encoders in {registry_root(root)}")


@models_app.command("describe")
def models_describe(name: str = typer.Argument(..., help="Registry name or folder."), root: Path | None = _ROOT) -> None:
    """Show a pretrained encoder's model card, architecture and files."""
    from healthfusion.models.registry import describe_encoder

    try:
        info = describe_encoder(name, root)
    except ValueError as exc:
        fail(exc)
    console.print_json(json.dumps(info, default=str))


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.add_typer(models_app, name="models", help="List and describe pretrained encoders.")
