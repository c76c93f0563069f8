# busybox_base WORK: the example's inputs in WORK: a store with busybox
# (WORK/store/busybox/bin/busybox) and a one-layer docker-archive base image
# (WORK/base.tar: busybox, /etc/passwd and /etc/group with root, and
# /etc/obsolete.conf), its tar times 0. Needs /bin/busybox and python3.
busybox_base() {
	local work=$1
	mkdir -p "$work/store/busybox/bin"
	cp /bin/busybox "$work/store/busybox/bin/busybox"
	ln -s busybox "$work/store/busybox/bin/sh"
	# The base image: a busybox root filesystem as a docker-archive.
	mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
	cp /bin/busybox "$work/rootfs/bin/busybox"
	for a in sh ls cat echo; do ln -s busybox "$work/rootfs/bin/$a"; done
	echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
	echo 'root:x:0:' > "$work/rootfs/etc/group"
	echo 'obsolete' > "$work/rootfs/etc/obsolete.conf"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/rootfs" -cf "$work/layer.tar" .
	python3 - "$work" <<'PY'
import hashlib, json, os, sys, tarfile
work = sys.argv[1]
layer = open(os.path.join(work, "layer.tar"), "rb").read()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
                     "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
layer_dir = hashlib.sha256(layer).hexdigest()
manifest = json.dumps([{"Config": config_name, "RepoTags": ["busybox:latest"],
                        "Layers": [layer_dir + "/layer.tar"]}]).encode()
with tarfile.open(os.path.join(work, "base.tar"), "w") as t:
    for name, data in [(config_name, config), (layer_dir + "/layer.tar", layer), ("manifest.json", manifest)]:
        info = tarfile.TarInfo(name); info.size = len(data)
        import io; t.addfile(info, io.BytesIO(data))
PY
}
