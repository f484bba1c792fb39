"""One installed namespace: the wheel adds only ``cdp``; pickles naming the old modules still load."""
from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

import cdp
from cdp.tagging.predictive import ProbabilityModel

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_exactly_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("cdp_spark-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"cdp"}
    assert "cdp/conf/identity.yaml" in names and "cdp/conf/profiles/local.yaml" in names
    metadata = next(name for name in names if name.endswith(".dist-info/top_level.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(metadata).decode().split() == ["cdp"]


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert cdp.__version__ == version("cdp-spark")


def _pickle_under_old_module_name(obj: object, new: str, old: str) -> bytes:
    # protocol 0 writes the class as "c<module>\n<name>\n": exactly what a model pickled before the
    # namespace move holds
    data = pickle.dumps(obj, protocol=0)
    assert f"c{new}\n".encode() in data
    return data.replace(f"c{new}\n".encode(), f"c{old}\n".encode())


def test_a_model_pickled_under_the_old_module_name_loads_with_a_deprecation_warning():
    model = ProbabilityModel.__new__(ProbabilityModel)
    model.__dict__["marker"] = "champion-v3"
    data = _pickle_under_old_module_name(model, "cdp.tagging.predictive", "tagging.predictive")
    sys.modules.pop("tagging.predictive", None)
    sys.modules.pop("tagging", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = pickle.loads(data)
    assert type(loaded) is ProbabilityModel and loaded.__dict__ == {"marker": "champion-v3"}
    moved = [w for w in caught if issubclass(w.category, DeprecationWarning) and "tagging" in str(w.message)]
    assert moved and "cdp.tagging" in str(moved[0].message)


@pytest.mark.parametrize(("old", "new"), [
    ("tagging.clusters", "cdp.tagging.clusters"),
    ("identity.normalize", "cdp.identity.normalize"),
    ("expectations.audience", "cdp.audiences.language"),
    ("expectations.privacy", "cdp.privacy"),
    ("jobs.lake", "cdp.lake"),
    ("jobs.run", None),  # entry points were never pickled: not aliased
])
def test_old_module_names_map_to_their_new_homes(old, new):
    from cdp._legacy import new_name

    assert new_name(old) == new


def test_a_real_package_of_an_old_name_wins_over_the_alias(tmp_path, monkeypatch):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "__init__.py").write_text("OWNER = 'someone else'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "features", raising=False)
    import features  # noqa: PLC0415 - the point is what this import finds

    assert features.OWNER == "someone else"
    monkeypatch.delitem(sys.modules, "features")
