"""Build step: the wheel carries the Hydra configs (conf/, with the sweep presets of sweeps/ in
conf/sweep) as package data in spfde/conf, so that an installed spfde runs without a checkout. In a
checkout (editable install) spfde reads conf/ directly (see spfde.config.CONF_DIR)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's conf/
        target = Path(self.build_lib) / "spfde" / "conf"
        shutil.rmtree(target, ignore_errors=True)
        # symlinks=False: conf/sweep -> ../sweeps is copied as real files
        shutil.copytree(Path(__file__).parent / "conf", target, symlinks=False)


setup(cmdclass={"build_py": BuildWithConfigs})
