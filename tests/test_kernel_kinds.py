"""Kernel time by library (benchmarks/kernel_kinds.py), on a trace with kernel names from a ResNeXt step on an H200."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import kernel_kinds  # noqa: E402


def _kernel(name: str, dur: float) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": 0, "dur": dur, "pid": 1, "tid": 7}


EVENTS = [_kernel("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", 300),
          _kernel("void nhwcSliceCKernel<__nv_bfloat16, __nv_bfloat16, float, true, (cudnnKernelDataType_t)0>", 100),
          _kernel("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816dgrad_optimized_bf16_256x64_32x4>", 100),
          _kernel("nvjet_sm90_tst_64x64_64x13_1x2_h_bz_splitK_NTT", 200),
          _kernel("triton_poi_fused__native_batch_norm_legit_functional_relu_9", 250),
          _kernel("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", 50),
          {"ph": "X", "cat": "cpu_op", "name": "aten::convolution", "ts": 0, "dur": 999, "pid": 1, "tid": 1}]


def test_kernels_are_summed_by_library():
    assert kernel_kinds.kinds(EVENTS) == {"convolution (cuDNN)": 0.5, "generated (Triton)": 0.25,
                                          "matrix product (cuBLAS)": 0.2, "other": 0.05}  # host operators not counted


def test_the_command_reads_every_trace_in_a_folder(tmp_path):
    run = tmp_path / "bench" / "fast_path"
    run.mkdir(parents=True)
    with gzip.open(run / "trace.json.gz", "wt") as f:
        json.dump({"traceEvents": EVENTS}, f)
    out = subprocess.run([sys.executable, str(BENCHMARKS / "kernel_kinds.py"), str(tmp_path), "--top", "3"],
                         capture_output=True, text=True, check=True).stdout
    assert "6 kernels, 1.00 ms of kernel time" in out and "convolution (cuDNN)" in out and " 50.0%" in out
    assert "sm90_xmma_fprop_implicit_gemm" in out and "FillFunctor" not in out  # the three longest kernels only
