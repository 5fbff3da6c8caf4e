"""Accelerators the step cost model (cost.py, `gr-train plan --hardware NAME`) predicts time and memory for: peak
dense FLOP/s, memory, memory bandwidth and interconnect, from vendor datasheets, plus the only fitted numbers of the
model, the efficiency constants (bench/bench_cost.py fits them from measured steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hardware:
    """One accelerator (and the node it sits in). Units: FLOP/s, bytes, bytes/s, seconds."""

    name: str
    peak_flops: dict[str, float]  # dense (no sparsity) FLOP/s by precision: "bf16", "fp16", "fp32"
    memory_bytes: float  # device memory
    memory_bandwidth: float  # device memory, bytes/s
    intra_node_bandwidth: float  # per device, one direction, to the node's other devices (NVLink), bytes/s
    inter_node_bandwidth: float  # per node, one direction (all its NICs together), bytes/s
    gpus_per_node: int  # devices one node holds
    source: str  # where the figures come from
    # Fitted (bench/bench_cost.py): the fraction of peak_flops the step's matmuls reach, of the bus bandwidth the
    # collectives reach, of memory_bandwidth the optimizer reaches; and the fixed cost of one ZeRO-3 parameter fetch
    # (one all-gather call: launch, hooks, synchronisation), which dominates at small sizes.
    compute_efficiency: float = 0.4
    comm_efficiency: float = 0.7
    memory_efficiency: float = 0.7
    fetch_overhead_s: float = 1e-4
    # Fitted host time, outside the matmuls and collectives: seconds per candidate passage of a micro-batch (each of
    # its B x n: tokenisation, collation, the step's per-passage Python and small kernels), and a fixed cost per
    # optimizer step when more than one rank trains (the step's small collectives beside ZeRO-3's parameter traffic:
    # loss and metric all-reduces, barriers, ranks waiting for each other). 0 where no step has measured them.
    host_per_passage_s: float = 0.0
    multi_rank_step_s: float = 0.0
    fitted: str = "assumed, not fitted"  # what the efficiency constants were fitted to
    # bytes per dropout-mask element: 1 with CUDA's native_dropout (bool mask); torch's CPU dropout keeps a mask in the
    # activation dtype
    dropout_mask_bytes: float | None = 1.0
    notes: dict[str, str] = field(default_factory=dict)

    def peak(self, precision: str) -> float:
        """Dense peak FLOP/s in `precision` (fp32 training on GPUs runs at the TF32 tensor-core rate only when
        enabled; the table gives the plain FP32 rate)."""
        return self.peak_flops[precision] if precision in self.peak_flops else self.peak_flops["fp32"]


GB = 1e9
TB = 1e12

HARDWARE: dict[str, Hardware] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 989.4 TFLOP/s dense (1,979 with sparsity), FP32 67 TFLOP/s,
    # 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s (both directions: 450 GB/s each way). DGX H100: 8 GPUs and 8 x 400 Gb/s
    # ConnectX-7 InfiniBand NDR ports per node = 400 GB/s per node each way (NVIDIA DGX H100 user guide).
    # fetch_overhead_s: the H200's (no H100 step has been measured).
    "h100": Hardware("H100 SXM 80GB", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 67e12}, 80 * GB, 3.35 * TB,
                     450 * GB, 400 * GB, 8, "NVIDIA H100 datasheet (SXM5); DGX H100 user guide (8x400 Gb/s IB)",
                     fetch_overhead_s=0.85e-3, fitted="fetch overhead: the H200's fit; the others assumed"),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): the H100's compute (BF16 989 TFLOP/s dense), 141 GB HBM3e at
    # 4.8 TB/s, NVLink 900 GB/s; HGX/DGX H200 nodes: 8 GPUs, 8 x 400 Gb/s NDR. fetch_overhead_s fitted to the eight
    # measured one-rank H200 steps of bench/results/gpu_check.json (`bench/bench_cost.py --gpu-check
    # bench/results/gpu_check.json --compute-efficiency 0.4`: 0.85 ms per gather, median |error| 20%, max 40%, the
    # sdpa rows under-predicted). Those steps are ~90% fetch overhead (~400 gathers of 0.85 ms), so they cannot
    # identify compute_efficiency (held at the assumed 0.4) nor comm_efficiency (one rank moves nothing).
    "h200": Hardware("H200 SXM 141GB", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 67e12}, 141 * GB, 4.8 * TB,
                     450 * GB, 400 * GB, 8, "NVIDIA H200 datasheet (SXM); DGX H200 (8x400 Gb/s IB)",
                     fetch_overhead_s=0.85e-3, fitted="fetch overhead fitted to 8 H200 steps; the others assumed"),
    # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): BF16 312 TFLOP/s dense, FP32 19.5 TFLOP/s, 80 GB HBM2e at
    # 2,039 GB/s, NVLink 600 GB/s (300 GB/s each way). DGX A100: 8 x 200 Gb/s HDR InfiniBand = 200 GB/s per node.
    # fetch_overhead_s: the H200's (no A100 step has been measured).
    "a100": Hardware("A100 SXM 80GB", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}, 80 * GB, 2.039 * TB,
                     300 * GB, 200 * GB, 8, "NVIDIA A100 datasheet (80GB SXM); DGX A100 user guide (8x200 Gb/s IB)",
                     fetch_overhead_s=0.85e-3, fitted="fetch overhead: the H200's fit; the others assumed"),
    # The 2-core development machine, one "device" per core: a rank is a process running one thread (KVM guest, Intel
    # Xeon family 6 model 207, AVX-512 with 2 FMA units per core at the 2.3 GHz base clock of `lscpu`'s BogoMIPS
    # 4600): 2.3e9 x 64 fp32 FLOP/cycle = 147 GFLOP/s per core; no bf16 matmul unit is exposed (no amx flags), so bf16
    # runs at most at the fp32 rate. Memory: 24 GiB for both ranks (12 GiB each); bandwidth 10 GB/s is an assumed
    # order for one core streaming a large copy. Collectives are gloo over loopback (2 GB/s assumed). The five
    # fitted constants are `python bench/bench_cost.py`'s fit to 23 measured sizes on the idle machine (2026-12-07;
    # rows in bench/results/cost_rows.json): median |error| 9.1%, max 19.7%, and left out of the fit max 22.7%
    # (BENCHMARKS.md). Small steps are host time (1.9 ms per candidate passage); 2 ranks pay a fixed 0.14 s a step and
    # gloo's traffic moves at 13% of the assumed 2 GB/s.
    "cpu": Hardware("cpu (one core of the 2-core development machine)", {"fp32": 147e9, "bf16": 147e9}, 12 * 2**30,
                    10 * GB, 2 * GB, 2 * GB, 2, "lscpu of the machine; see the comment in gr_train/hardware.py",
                    compute_efficiency=0.577, comm_efficiency=0.128, memory_efficiency=1.0, fetch_overhead_s=0.621e-3,
                    host_per_passage_s=1.89e-3, multi_rank_step_s=0.139,
                    fitted="fitted to 23 measured steps (bench/bench_cost.py)",
                    dropout_mask_bytes=None),
}


def get(name: str) -> Hardware:
    """HARDWARE[name]; ValueError naming the known entries."""
    if name not in HARDWARE:
        raise ValueError(f"--hardware {name}: unknown ({', '.join(HARDWARE)})")
    return HARDWARE[name]
