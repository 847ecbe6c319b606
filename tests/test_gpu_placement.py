"""GPUs where they belong, on a simulated device list (no GPU needed): one process worker per
visible GPU, a scheduler's CUDA_VISIBLE_DEVICES respected, Ray and Slurm refusing to run on CPU
silently under --device auto, (model, dataset) groups with seeds in sequence on GPUs; and the
GPU settings: bf16 only where native, fp16 with a scaler elsewhere, determinism, the batch that
fits searched once."""

from __future__ import annotations

import pytest
import torch

from tlbench.errors import UserError
from tlbench.executors import ExecutorConfig, executor_class, executor_names
from tlbench.executors.base import Executor, WorkerConfig, group_cells, visible_gpus
from tlbench.executors.process import ProcessExecutor, worker_plan
from tlbench.plugins import PluginConfig


@pytest.fixture
def four_gpus(monkeypatch):
    """torch sees four CUDA devices (whatever CUDA_VISIBLE_DEVICES lists, it shows four)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_without_a_visible_devices_list_the_gpus_are_numbered_from_zero(four_gpus):
    assert visible_gpus() == ["0", "1", "2", "3"]


def test_a_schedulers_visible_devices_are_kept_as_the_physical_ids(four_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert visible_gpus() == ["4", "5", "6", "7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa, GPU-bbbb")
    assert visible_gpus() == ["GPU-aaaa", "GPU-bbbb"]


def test_no_cuda_means_no_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpus() == []


def test_one_worker_per_gpu_by_default_with_the_cores_shared_out():
    plan = worker_plan(None, ["4", "5", "6", "7"], cores=64, groups=100)
    assert plan == [("4", 16), ("5", 16), ("6", 16), ("7", 16)]


def test_more_workers_than_gpus_share_them_round_robin():
    plan = worker_plan(6, ["4", "5"], cores=12, groups=100)
    assert [gpu for gpu, _ in plan] == ["4", "5", "4", "5", "4", "5"]


def test_without_gpus_one_worker_per_core_and_never_more_than_groups():
    assert worker_plan(None, [], cores=8, groups=100) == [(None, 1)] * 8
    assert worker_plan(None, ["0", "1"], cores=8, groups=1) == [("0", 8)]


def _base(device: str) -> WorkerConfig:
    return WorkerConfig(PluginConfig(), "/tmp/cache", device, "/tmp/run", "local")


def test_process_workers_see_only_their_own_listed_gpu(four_gpus, monkeypatch):
    import tlbench.executors.process as process

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    started = []
    monkeypatch.setattr(process, "ProcessSlot", lambda config: started.append(config) or config)
    monkeypatch.setattr(process, "local_cores", lambda: 64)
    executor = ProcessExecutor.create(ExecutorConfig("process"), _base("cuda"), None, "auto")
    executor.start(groups=10)
    assert [c.visible_gpu for c in started] == ["4", "5", "6", "7"]
    assert {c.threads for c in started} == {16} and {c.device for c in started} == {"cuda"}
    assert executor.groups_by_seed is False, "on GPUs a group is a (model, dataset)"


def test_a_pinned_cuda_device_is_not_spread_over_gpus(four_gpus, monkeypatch):
    import tlbench.executors.process as process

    started = []
    monkeypatch.setattr(process, "ProcessSlot", lambda config: started.append(config) or config)
    monkeypatch.setattr(process, "local_cores", lambda: 8)
    executor = ProcessExecutor.create(ExecutorConfig("process"), _base("cuda:1"), None, "cuda:1")
    executor.start(groups=3)
    assert {c.visible_gpu for c in started} == {None} and executor.groups_by_seed


@pytest.mark.parametrize("kind, option", [("ray", "gpus_per_cell"), ("slurm", "gpus_per_task")])
def test_remote_executors_under_device_auto_without_a_gpu_request_say_so(kind, option):
    pytest.importorskip("ray" if kind == "ray" else "submitit")
    local = (("local", "true"),) if kind == "slurm" else ()
    with pytest.raises(UserError, match=f"no GPU unless asked.*{option}=N.*--device cpu"):
        ExecutorConfig(kind, options=local).check("auto")
    ExecutorConfig(kind, options=local).check("cpu")  # asked for CPUs: fine
    ExecutorConfig(kind, options=(*local, (option, "1"))).check("auto")


def test_remote_executors_check_cells_on_their_workers_not_in_the_parent():
    assert executor_class("local").checks_in_parent and executor_class("process").checks_in_parent
    assert not executor_class("ray").checks_in_parent
    assert not executor_class("slurm").checks_in_parent


def test_every_registered_executor_implements_the_one_interface():
    assert executor_names() == ("local", "process", "ray", "slurm")
    for name in executor_names():
        cls = executor_class(name)
        assert issubclass(cls, Executor) and cls.name == name
        assert cls.run is not Executor.run and cls.create is not Executor.create


def test_unknown_executors_and_options_are_one_line_with_a_suggestion():
    with pytest.raises(UserError, match="did you mean 'process'"):
        ExecutorConfig("proces").check("cpu")
    with pytest.raises(
        UserError, match="has no option 'gpu_per_cell'.*did you mean 'gpus_per_cell'"
    ):
        ExecutorConfig.from_cli("ray", None, ["gpu_per_cell=1"]).check("cpu")
    with pytest.raises(UserError, match="executor local takes no options"):
        ExecutorConfig.from_cli("local", None, ["x=1"]).check("cpu")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        ExecutorConfig.from_cli("ray", None, ["address"])


class _Cell:
    def __init__(self, model, dataset, seed, strategy):
        self.model, self.dataset, self.seed, self.strategy = model, dataset, seed, strategy


def test_gpu_groups_are_model_and_dataset_with_the_seeds_in_sequence():
    cells = [_Cell("m", "d", seed, s) for s in ("lp", "ft") for seed in (2, 0, 1)]
    cells.append(_Cell("m", "e", 0, "lp"))
    groups = group_cells(cells, by_seed=False)
    assert [len(g) for g in groups] == [6, 1]
    assert [c.seed for c in groups[0]] == [0, 0, 1, 1, 2, 2]
    assert [len(g) for g in group_cells(cells)] == [2, 2, 2, 1]


# -- GPU settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_auto_precision_is_bf16_only_where_native(monkeypatch, capability, expected):
    from tlbench.engine.runtime import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated too
    assert resolve_precision("auto", torch.device("cuda")) == expected
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"


def test_the_grad_scaler_is_a_no_op_except_for_fp16_on_cuda():
    from tlbench.engine.runtime import backward_step, grad_scaler

    assert not grad_scaler(torch.device("cpu"), "fp16").is_enabled()
    assert not grad_scaler(torch.device("cpu"), "fp32").is_enabled()
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    backward_step((weight * 2).sum(), optimizer, grad_scaler(torch.device("cpu"), "fp32"))
    assert torch.equal(weight.detach(), torch.zeros(2))


def test_deterministic_mode_and_tf32_follow_the_environment(monkeypatch):
    from tlbench.engine.runtime import configure_runtime, runtime_settings

    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
    )
    monkeypatch.delenv("TLBENCH_DETERMINISTIC", raising=False)
    monkeypatch.delenv("TLBENCH_TF32", raising=False)
    assert runtime_settings() == {"deterministic": False, "cudnn_benchmark": True, "tf32": True}
    monkeypatch.setenv("TLBENCH_DETERMINISTIC", "1")
    monkeypatch.setenv("TLBENCH_TF32", "off")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        settings = configure_runtime()
        assert settings == {"deterministic": True, "cudnn_benchmark": False, "tf32": False}
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        torch.backends.cuda.matmul.allow_tf32 = before[2]
        torch.backends.cudnn.allow_tf32 = before[3]
        torch.backends.cudnn.deterministic = before[4]


def test_the_batch_that_fits_is_searched_once_per_model_and_input_size():
    from tlbench.engine.runtime import accumulation_steps, with_oom_retry

    tried = []

    def forward(batch):
        tried.append(batch)
        if batch > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return batch

    key = ("model-fingerprint", (3, 224, 224), "cuda:0", id(tried))
    assert with_oom_retry(forward, 128, key=key) == (16, 16)
    assert tried == [128, 64, 32, 16]
    tried.clear()
    assert with_oom_retry(forward, 128, key=key) == (16, 16)
    assert tried == [16], "the second call starts at the batch that fitted"
    assert accumulation_steps(128, 16) == 8 and accumulation_steps(100, 16) == 7


def test_groups_come_dataset_by_dataset_so_each_dataset_is_read_once_per_worker():
    cells = [_Cell(m, d, 0, "lp") for m in ("m1", "m2") for d in ("d1", "d2", "d3")]
    order = [(g[0].model, g[0].dataset) for g in group_cells(cells)]
    assert order == [
        ("m1", "d1"),
        ("m2", "d1"),
        ("m1", "d2"),
        ("m2", "d2"),
        ("m1", "d3"),
        ("m2", "d3"),
    ]


def test_the_gpu_settings_are_recorded_in_env_json_and_every_record(tmp_path, monkeypatch):
    import json

    from helpers import request, tiny_host, tiny_suite

    from tlbench.runner import run_suite

    monkeypatch.setenv("TLBENCH_TF32", "off")
    # configure_runtime sets process-wide flags: put them back for the tests that follow
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    before_matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        outcome = run_suite(
            request(tmp_path, tiny_suite(tmp_path / "s.toml", seeds=(0,))), tiny_host()
        )
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = before
        torch.backends.cuda.matmul.allow_tf32 = before_matmul
    env = json.loads((outcome.run_dir / "env.json").read_text())
    assert env["runtime"] == {"deterministic": False, "cudnn_benchmark": True, "tf32": False}
    assert env["executor"] == {"kind": "local", "workers": None, "options": {}}
    for record in outcome.records:
        assert record["runtime"]["precision_auto"] == "fp32"
        assert record["runtime"]["deterministic"] is False
