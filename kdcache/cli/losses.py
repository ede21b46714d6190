"""``kdcache losses``: the distillation losses, their defaults and papers (from the registry)."""

from __future__ import annotations

import click


@click.command("losses")
@click.argument("name", required=False)
def losses_command(name: str | None) -> None:
    """List the distillation losses (or show one), with defaults and paper references."""
    from kdcache.cli._common import user_errors
    from kdcache.losses.registry import CE_TITLE, list_losses, loss_info

    with user_errors():
        names = [name] if name else list_losses()
        infos = [loss_info(n) for n in names]
    for info in infos:
        click.echo(f"{info.name}: {info.title}")
        click.echo(f"  loss       {info.formula}")
        click.echo(f"  paper      {info.reference}")
        click.echo(f"  code       {info.code}")
        hparams = ", ".join(f"{k}={v!r}" for k, v in info.defaults.items())
        click.echo(f"  defaults   {hparams}")
        click.echo(
            f"  objective  ce_weight={info.ce_weight}, distill_weight={info.distill_weight}, "
            f"warmup_epochs={info.warmup_epochs:g}"
        )
        click.echo(f"  terms      {', '.join(info.terms)}")
        if info.needs_dense_teacher:
            click.echo("  cache      needs dense teacher logits (not a top-K sparse cache)")
        if info.notes:
            click.echo(f"  notes      {info.notes}")
        click.echo("")
    if not name:
        click.echo(f"ce: {CE_TITLE}")
