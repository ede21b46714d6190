"""The ``kdcache`` command line: a thin click layer.

Each command lives in its own module here, parses options, builds a config and calls one library
function. Failures become one line and an exit status in one place, :mod:`kdcache.cli.errors`,
called from the group's ``invoke``: 1 for errors, 130 for Ctrl-C, never a traceback unless ``-v``.
Heavy imports (torch, timm, zarr) happen inside command bodies so ``kdcache --help`` is instant.
"""

from __future__ import annotations

import importlib
import logging

import click

from kdcache._version import __version__
from kdcache.cli.errors import to_click_exception

# command name -> "module:attribute"; imported lazily so one command's imports never slow another.
_COMMANDS: dict[str, str] = {
    "extract": "kdcache.cli.extract:extract_command",
    "info": "kdcache.cli.inspect:info_command",
    "verify": "kdcache.cli.inspect:verify_command",
    "pack": "kdcache.cli.share:pack_command",
    "ls": "kdcache.cli.share:ls_command",
    "losses": "kdcache.cli.losses:losses_command",
    "models": "kdcache.cli.models:models_command",
    "train": "kdcache.cli.train:train_command",
    "eval": "kdcache.cli.evaluate:eval_command",
    "demo": "kdcache.cli.demo:demo_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BaseException as exc:
            name = ctx.invoked_subcommand
            command = self.get_command(ctx, name) if name else None
            error = to_click_exception(exc, debug=bool(ctx.params.get("verbose")), command=command)
            if error is None:
                raise
            raise error from exc


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="kdcache")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Offline knowledge distillation: extract teacher logits once, train students from them."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
