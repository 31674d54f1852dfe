# The pod sandbox ("pause") image the test nodes' containerd runs, since no
# registry can be reached: Kubernetes' own build/pause/linux/pause.c, compiled
# static by hack/build-image.sh. The build context holds only that binary.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
