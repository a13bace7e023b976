"""bench.py --profile's table (gptq_chat/testing/step_profile.py): kernels grouped by what they do, by the names
they have on an H100 (torch 2.11, gptqmodel 7.6, Triton 3.6), and the weight GEMMs' bandwidth over what they read."""

from __future__ import annotations

from gptq_chat.testing.step_profile import KernelTime, group_of, step_table


def test_kernels_are_grouped_by_the_names_they_have_on_the_card() -> None:
    names = {
        "void marlin::Marlin<(marlin::ScalarType::Id)5, 256, 1, 8, 8, true, 4, 8, false>(...)": "int4 GEMM (Marlin)",
        "gemv_kernel": "int4 GEMV (engine/int4_linear.py)",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4> >(...)": "attention",
        "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize64x128x64_warpgroupsize1x1x1": "fp16 GEMM (the head)",
        "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0": "RMSNorm",
        "void at::native::index_elementwise_kernel<128, 4, ...>(...)": "KV cache write/read by index",
        "attend_kernel": "attention",
    }
    assert {name: group_of(name) for name in names} == names
    assert group_of("some_new_kernel") == "other"


def test_the_table_gives_each_groups_share_and_the_weight_gemms_bandwidth() -> None:
    rows = [
        KernelTime("marlin::Marlin<...>", "int4 GEMM (Marlin)", 128, 2116.0),
        KernelTime("sm90_xmma_gemm", "fp16 GEMM (the head)", 1, 434.0),
        KernelTime("index_elementwise_kernel", "KV cache write/read by index", 64, 230.0),
    ]
    table = step_table(rows, weight_bytes=3_400_000_000, captured_ms=3.45)
    assert "2,780 µs of GPU time; the captured step: 3,450 µs" in table
    assert "| int4 GEMM (Marlin) | 128 | 2,116 | 76% | 3.40 GB at 1.61 TB/s |" in table
    assert "| KV cache write/read by index | 64 | 230 | 8% |  |" in table
