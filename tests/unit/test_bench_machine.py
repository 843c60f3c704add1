"""The machine line of the benchmark reports names the instructions that set int8 speed."""

from bench.machine import describe_cpu


def test_an_avx2_only_cpu_is_said_to_lack_int8_dot_products():
    text = describe_cpu("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2\n")
    assert text.startswith("AMD EPYC, ")
    assert "AVX2" in text and "no int8 dot-product instructions" in text and "AVX-512" not in text


def test_avx512_vnni_is_named_first_and_no_warning_is_added():
    text = describe_cpu("model name : AMD EPYC\nflags : avx2 avx512f avx512_vnni\n")
    assert text.endswith("AVX-512 VNNI, AVX-512, AVX2")


def test_an_arm_cpu_with_dot_product_is_recognised():
    text = describe_cpu("processor : 0\nFeatures : fp asimd asimddp\n")
    assert "Arm dot product" in text and "no int8" not in text
