"""The profile's kernel classes (CPU): cuDNN/cuBLAS names by what they compute, inductor's fused kernels apart."""

import pytest

pytest.importorskip("torch")

from tests.gpu.unet_profile import kernel_class


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x192x64", "convolution"),
        ("nvjet_sm90_hsh_168x128_64x5_1x2_h_bz_coopA_bias_TNN", "matmul"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64", "attention"),
        ("triton_per_fused_add_clone_convolution_native_group_norm_silu_32", "fused (inductor)"),
        ("triton_poi_fused_gelu_mul_split_view_14", "fused (inductor)"),
        ("triton_tem_fused_addmm_7", "matmul"),
        ("group_norm_apply", "normalization"),
        ("void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add<c10::Half>", "elementwise"),
    ],
)
def test_kernel_class(name, label):
    assert kernel_class(name) == label
