"""Build glue (metadata is in setup.cfg): the wheel ships the API contract, whose one copy
is docs/api/openapi.yaml, as package data at collector/web/openapi.yaml (served at
/openapi.yaml). A source checkout reads docs/api/openapi.yaml directly."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

OPENAPI = Path("docs", "api", "openapi.yaml")


class BuildPyWithContract(build_py):
    """``build_py`` plus docs/api/openapi.yaml copied into the built package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib, "collector", "web", "openapi.yaml")
        self.mkpath(str(target.parent))
        self.copy_file(str(OPENAPI), str(target))


setup(cmdclass={"build_py": BuildPyWithContract})
