"""The app start-up measurement (tests/gpu/app_start.py) on the CPU: a real server, a tiny checkpoint, two jobs."""

from tests.gpu.app_start import one_run
from tests.support.tiny_checkpoints import write_checkpoint


def test_app_start_times_the_page_and_two_jobs_of_a_real_server(tmp_path):
    checkpoint = write_checkpoint("sd1", tmp_path / "tiny.safetensors")
    data_dir = tmp_path / "data"  # as with --restarts: kept after the run
    phases = one_run(checkpoint, 64, ["--use-cpu", "all"], timeout=180, data_dir=data_dir)
    assert 0 < phases["page_s"] < phases["first_image_s"]
    assert phases["first_job_s"] > 0 and phases["second_job_s"] > 0
    assert "Running on local URL" in phases["log"] and "Loaded tiny.safetensors" in phases["log"]
    assert (data_dir / "cache" / "hashes.json").is_file()  # the server used the given data directory
