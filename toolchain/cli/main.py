"""The `qassure` console script: a typer app; one file per command in toolchain/cli/.

To add a command: write toolchain/cli/NAME.py with a function `command(...)` (typed typer
options, load -> call the library -> report), then add one line to COMMANDS below.
Modules are imported lazily-cheap: nothing here imports TensorFlow.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from toolchain.cli import _common, check_bitexact, emit_c, inspect, quantize, targets
from toolchain.cli import certify as certify_cmd
from toolchain.cli import run as run_cmd
from toolchain.cli import verify as verify_cmd
from toolchain.errors import EXIT_FAIL, EXIT_SOUNDNESS, QassureError, SoundnessViolation

# name -> command function. One line per command.
COMMANDS: dict[str, Any] = {
    "targets": targets.command,
    "inspect": inspect.command,
    "check-bitexact": check_bitexact.command,
    "quantize": quantize.command,
    "certify": certify_cmd.command,
    "run": run_cmd.command,
    "verify-certificate": verify_cmd.command,
    "emit-c": emit_c.command,
}


class QassureGroup(TyperGroup):
    """Turns the errors a user can act on into one stderr line and their exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except QassureError as exc:
            _common.error(exc)
            raise typer.Exit(exc.exit_code) from None
        except SoundnessViolation as exc:
            sys.stderr.write(f"soundness violation: {_common.one_line(exc)}\n")
            raise typer.Exit(EXIT_SOUNDNESS) from None


app = typer.Typer(
    cls=QassureGroup,
    name="qassure",
    help="Certified float-vs-int8 error bounds for TFLite models on microcontrollers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only results and errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Print more detail."),
) -> None:
    _common.SETTINGS.verbosity = -1 if quiet else (1 if verbose else 0)


for _name, _fn in COMMANDS.items():
    app.command(_name)(_fn)


def main(argv: list[str] | None = None) -> None:
    """Entry point: no traceback ever reaches the user."""
    try:
        code = app(args=argv, standalone_mode=False)
    except QassureError as exc:  # raised outside a command (e.g. in the callback)
        _common.error(exc)
        sys.exit(exc.exit_code)
    except SoundnessViolation as exc:
        sys.stderr.write(f"soundness violation: {_common.one_line(exc)}\n")
        sys.exit(EXIT_SOUNDNESS)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:
        from typer._click.exceptions import ClickException  # usage errors: click's own message

        if isinstance(exc, ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        sys.stderr.write(f"internal error: {type(exc).__name__}: {_common.one_line(exc)}\n")
        sys.exit(EXIT_FAIL)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
