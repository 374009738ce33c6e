"""bench.attribution --from-json: a bad speed.json beside the suites' JSON is refused in one line."""

import shutil
from pathlib import Path

import pytest

from bench.attribution import main

SHARD = Path("docs/data/gpu/2026-11-30b/attribution/poisoned-0.json")


@pytest.mark.parametrize(("speed", "said"), [("not json", "not JSON"), ('{"suite": "crag"}', "not a poisoned result")])
def test_a_bad_speed_file_is_refused(tmp_path, capsys, speed, said):
    shutil.copy(SHARD, tmp_path / "poisoned.json")
    (tmp_path / "speed.json").write_text(speed)
    with pytest.raises(SystemExit) as e:
        main(["--from-json", "--out-dir", str(tmp_path)])
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_a_good_speed_file_is_read(tmp_path, capsys):
    shutil.copy(SHARD, tmp_path / "poisoned.json")
    shutil.copy(SHARD, tmp_path / "speed.json")
    assert main(["--from-json", "--out-dir", str(tmp_path)]) == 0
    assert '"speed"' in capsys.readouterr().out
