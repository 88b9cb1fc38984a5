"""Differentiable 3D Gaussian rasterization: :func:`core.raster.render.rasterize` and its backends.

Modules (one concept each):
    render          ``rasterize()``: gsplat semantics, picks a backend
    projection      EWA projection to screen space (gsplat rules), torch autograd
    sh              spherical harmonics (degrees 0-2) -> view-dependent RGB
    tiles           16x16 tile binning, depth-sorted per-tile lists
    torch_backend   tile compositing with a hand-written backward (CPU / any device)
    reference       float64 brute-force renderer, the ground truth for tests
    gsplat_backend  gsplat CUDA kernels, imported lazily, GPU only
"""
