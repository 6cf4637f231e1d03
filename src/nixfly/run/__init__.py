"""Running an image locally without Docker: unpack it into a cached rootfs, then start it with runc,
bubblewrap or unshare+chroot (``nixfly run``)."""
