"""InsTaG core: preprocessing, audio features, Gaussians, motion fields, rasterizer, training.

Conventions (the one place they are written down; every module follows them)
=============================================================================

Time and media
    Video runs at 25 fps; audio is mono float32 at 16 kHz. Video frame ``i`` covers
    audio samples ``[640*i, 640*(i+1))`` exactly (40 ms). Audio features run at
    50 Hz (20 ms steps), so frame ``i`` spans feature steps ``2i`` and ``2i+1``; the
    per-frame window is 16 steps ``[2i-7, 2i+9)`` (centred on the frame's middle,
    edge-padded outside the clip).

Images
    Frames are ``(H, W, 3) uint8`` RGB (numpy) or ``(H, W, 3) float32`` in [0, 1]
    (torch). Processed clips are square, ``res x res`` pixels (default 256 on CPU,
    512 on GPU). Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``;
    ``u`` goes right, ``v`` goes down.

Head-canonical space (the "world")
    The head is fixed and the camera moves. Units are metres: the head fits in
    about +-0.1, the motion fields cover +-0.15. Origin: the centroid of the
    clip's canonical FaceMesh shape. Axes follow the camera at a frontal view:
    +x to the image right (the subject's left), +y down, +z away from the camera
    (into the head). So a frontal camera sits at about ``(0, 0, -0.6)`` looking
    along +z.

Cameras (OpenCV convention)
    Camera coordinates: +x right, +y down, +z forward (into the scene).
    ``viewmat``: (4, 4) float32 world-to-camera, ``X_cam = R @ X_world + t``; the
    per-frame head pose *is* the viewmat because the head is the world.
    ``K``: (3, 3) pinhole intrinsics ``[[f, 0, cx], [0, f, cy], [0, 0, 1]]`` in
    pixels, one focal ``f`` per clip, ``cx = cy = res / 2`` (pixel-centre rule
    above, so a point on the optical axis projects to ``u = res/2``).
    Projection: ``u = f * x / z + cx``, ``v = f * y / z + cy``.

Quaternions are ``wxyz``. Gaussian scales passed to the rasterizer are already
activated (positive, world units).
"""
