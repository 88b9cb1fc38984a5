"""Metrics of a rendered frame against the recorded one: PSNR / SSIM (full frame, face, head,
head-boundary band), LPIPS, landmark distance, AU error and the lip-aperture scores
(:mod:`eval.metrics.frames`); the LPIPS network (:mod:`eval.metrics.lpips_net`).
Imports nothing else of ``eval``."""
