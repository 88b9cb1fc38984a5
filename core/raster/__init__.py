"""Differentiable Gaussian rasterization backends; use :func:`core.render.rasterize`.

Modules (one concept each):
    projection      EWA projection to screen space (gsplat rules), torch autograd
    sh              spherical harmonics (degrees 0-2) -> view-dependent RGB
    tiles           16x16 tile binning, depth-sorted per-tile lists
    torch_backend   tile compositing with a hand-written backward (CPU / any device)
    reference       float64 brute-force renderer, the ground truth for tests
    gsplat_backend  gsplat CUDA kernels, imported lazily, GPU only
"""
