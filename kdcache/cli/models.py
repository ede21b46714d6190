"""``kdcache models``: list the CIFAR zoo (and, on request, timm's names)."""

from __future__ import annotations

import click

from kdcache.cli._common import int_option, user_errors


@click.command("models")
@int_option("--num-classes", 1, 1 << 20, default=100, help="Classes the parameter counts assume.")
@int_option("--in-chans", 1, 1 << 10, default=3, help="Input channels the parameter counts assume.")
@click.option(
    "--timm",
    "timm_pattern",
    metavar="PATTERN",
    default=None,
    help="Also list timm's model names matching PATTERN (e.g. 'resnet*'); use them as timm:<name>.",
)
def models_command(num_classes: int, in_chans: int, timm_pattern: str | None) -> None:
    """List the CIFAR distillation zoo with parameter counts.

    Zoo names are mdistiller's (resnet56, wrn_40_2, MobileNetV2, ...); timm knows them as
    cifar_<name>. Any timm model works as timm:<name>, your own as path/to/file.py:factory.
    """
    with user_errors():
        from kdcache.models.factory import zoo_parameter_counts
        from kdcache.models.zoo import ZOO

        counts = zoo_parameter_counts(num_classes=num_classes, in_chans=in_chans)
        click.echo(f"{'name':<14}{'timm name':<20}{'family':<18}{'params':>12}")
        for name, params in counts.items():
            entry = ZOO[name]
            click.echo(f"{name:<14}{entry.timm_name:<20}{entry.family:<18}{params:>12,}")
        if timm_pattern is not None:
            import timm

            names = [n for n in timm.list_models(timm_pattern) if not n.startswith("cifar_")]
            click.echo(f"\ntimm models matching {timm_pattern!r} ({len(names)}):")
            for n in names:
                click.echo(f"  timm:{n}")
