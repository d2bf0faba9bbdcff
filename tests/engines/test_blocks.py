"""Decoding tasks sized by work (engines.blocks): blocks of about a task's audio, at least one
file each, a small job spread over the decoders, and a file's audio estimated from its size."""

from __future__ import annotations

from conftest import write_audio

from matpac_cli.engines import blocks
from matpac_cli.engines.blocks import audio_seconds, plan

TASK = blocks.TASK_S * blocks.DECODE_X  # audio-seconds of one task


def sizes(out: list[range]) -> list[int]:
    return [len(r) for r in out]


def covers(out: list[range], n: int) -> bool:
    """Every file once, in order, no block empty."""
    return [i for r in out for i in r] == list(range(n)) and all(len(r) for r in out)


def test_a_million_tracks_make_tasks_of_a_task_s_work_not_a_fixed_count():
    tracks = [210.0] * 1_000_000  # 3.5-minute tracks
    out = plan(tracks, at_least=64)
    assert covers(out, len(tracks))
    per = round(TASK / 210)  # 29 tracks (6,090 s) is nearer 6,000 s than 28 (5,880 s)
    assert set(sizes(out)[:-1]) == {per} and len(out) == -(-len(tracks) // per)  # today: 4,096 of 244


def test_short_clips_go_many_to_a_task_and_long_files_one_each():
    out = plan([6.0] * 10_000, at_least=8)
    assert covers(out, 10_000) and sizes(out) == [round(TASK / 6)] * 10
    long = plan([3 * TASK, 2 * TASK, 5.0, 5.0, 4 * TASK], at_least=1)
    assert [list(r) for r in long] == [[0], [1], [2, 3], [4]]  # a file past the target is a task alone


def test_a_block_closes_nearer_its_target():
    half = TASK / 2
    assert [list(r) for r in plan([half, half, 0.4 * TASK, half], at_least=1)] == [[0, 1], [2, 3]]
    assert [list(r) for r in plan([half, 0.6 * TASK, half], at_least=1)] == [[0, 1], [2]]  # 600 s over, not 3,000 short
    assert [list(r) for r in plan([0.8 * TASK, half, half], at_least=1)] == [[0], [1, 2]]  # 1,500 s over: closed


def test_a_small_job_is_spread_over_the_decoders():
    assert sizes(plan([30.0] * 20, at_least=16)) == [1] * 20  # 20 files, 16 decoders: one file each
    assert sizes(plan([30.0] * 64, at_least=16)) == [4] * 16
    assert sizes(plan([30.0] * 5, at_least=16)) == [1] * 5  # never fewer files than a block needs
    assert plan([], at_least=4) == []


def test_sizes_unknown_spread_evenly():
    out = plan([0.0] * 10, at_least=4)
    assert covers(out, 10) and sizes(out) == [2, 3, 2, 3]


def test_a_file_s_audio_is_estimated_from_its_size_and_format(tmp_path):
    wav = write_audio(tmp_path / "a.wav", 10.0, sr=44100, channels=2, subtype="PCM_16")
    assert 9.5 < audio_seconds(wav) < 10.5  # 16-bit 44.1 kHz stereo: the PCM rate
    assert audio_seconds(tmp_path / "x.flac", size=900_000) == 10.0
    assert audio_seconds(tmp_path / "x.MP3", size=240_000) == 10.0  # lossy, whatever the case
    assert audio_seconds(tmp_path / "gone.wav") == 0.0
