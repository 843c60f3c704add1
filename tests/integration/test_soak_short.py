"""A short run of the fault suite (`make soak` runs the full one): SIGKILLs, a broker restart and an S3 outage
while a folder and a stream camera score real frames; every check of bench.soak must pass."""

from __future__ import annotations

from bench.soak import main


def test_short_soak_loses_nothing(tmp_path, bottle_bundle, datasets_root, capsys):
    args = ["--bundle", str(bottle_bundle), "--datasets", str(datasets_root), "--work", str(tmp_path / "soak")]
    args += ["--frames", "240", "--kills", "3", "--broker-restarts", "1", "--s3-outage-frames", "40"]
    args += ["--corrupt", "4", "--burst", "60", "--seed", "1"]
    code = main(args)
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    assert "3 SIGKILLs, 1 broker restarts, 1 S3 outage" in out
    assert "folder-cam: 168 frames fed, 168 verdicts, 0 missing" in out
    assert "stream-cam: 72 frames fed, 72 verdicts, 0 missing" in out
    assert "all checks passed" in out
