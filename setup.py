"""Builds the optional C core; pyproject.toml holds everything else.

The C extension is optional: where no compiler works the install still
succeeds with the pure-Python core and says so.  QUERYMETER_REQUIRE_C=1 makes
that a build failure instead (CI sets it), so a broken build can never ship
the fallback silently.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE_C = os.environ.get("QUERYMETER_REQUIRE_C", "0") == "1"


class optional_build_ext(build_ext):
    """build_ext that falls back to pure Python unless QUERYMETER_REQUIRE_C=1."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure means: no C core
            self._fall_back(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        if REQUIRE_C:
            raise RuntimeError(
                f"querymeter: building the C core failed ({exc}) and QUERYMETER_REQUIRE_C=1"
            ) from exc
        banner = "=" * 72
        sys.stderr.write(
            f"\n{banner}\nquerymeter: could not build the C core ({exc}).\n"
            "querymeter will use its pure-Python core: same results, more overhead\n"
            "per query. Set QUERYMETER_REQUIRE_C=1 to make this an error.\n"
            f"{banner}\n\n"
        )


setup(
    ext_modules=[
        Extension(
            "querymeter.core._c",
            sources=["querymeter/core/_c.c"],
            extra_compile_args=["-O2"] if sys.platform != "win32" else [],
        )
    ],
    cmdclass={"build_ext": optional_build_ext},
)
