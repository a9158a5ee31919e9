"""Ships rules/ and schemas/ inside the wheel while they stay top-level folders in the repository.

Everything else is declared in pyproject.toml. A non-editable install (`pip install .`) copies the
two folders to b12pipeline/_bundled/ in the built package; b12pipeline/paths.py looks there first.
An editable install reads them from the checkout, so nothing is copied.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("rules", "schemas")


class BuildWithRulesAndSchemas(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name in BUNDLED:
            target = Path(self.build_lib) / "b12pipeline" / "_bundled" / name
            self.copy_tree(name, str(target))


setup(cmdclass={"build_py": BuildWithRulesAndSchemas})
