# The benchmarks' baseline: nixpkgs vmTools' data path, reproduced with
# qemu-system-x86_64 -M microvm, our guest kernel, a busybox /init and
# QEMU's virtiofsd (/usr/lib/qemu/virtiofsd) for the shares, as nixpkgs
# runs it (runInLinuxVM with virtiofs). Only the benchmarks use it; the
# product has no QEMU path. Sourced by scripts/bench-*; needs root
# (virtiofsd) and qemu-system-x86.
#
#   baseline_run KERNEL MEM_MIB DISK|"" JOB_SH [TAG=DIR[:ro]]...
#
# runs JOB_SH (a busybox sh script, at /xchg/job.sh in the guest) with the
# shares mounted (tag xchg at /xchg; any other tag at its host path), the
# disk as /dev/vda, and prints the guest's console; the job's exit status
# is the function's.

baseline_require() {
	command -v qemu-system-x86_64 >/dev/null || { echo "baseline: install qemu-system-x86" >&2; return 1; }
	[ -x /usr/lib/qemu/virtiofsd ] || { echo "baseline: /usr/lib/qemu/virtiofsd missing (qemu-system-x86)" >&2; return 1; }
	[ "$(id -u)" = 0 ] || { echo "baseline: virtiofsd needs root" >&2; return 1; }
}

# A fresh, empty ext4 scratch disk of $2 MiB at $1 (no journal, as
# rootlayer's), made on the host.
baseline_disk() {
	truncate -s 0 "$1"
	truncate -s "$2M" "$1"
	mkfs.ext4 -q -F -O ^has_journal -m 0 "$1"
}

# The busybox initramfs, made once per run in $1 (a directory).
baseline_initramfs() {
	local dir=$1/initramfs
	mkdir -p "$dir/bin" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/xchg" "$dir/tmp"
	cp /bin/busybox "$dir/bin/busybox"
	cat > "$dir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for arg in $(cat /proc/cmdline); do
	case $arg in
	baseline.share=*)
		spec=${arg#baseline.share=}
		tag=${spec%%=*}; rest=${spec#*=}; path=${rest%%:*}
		opts=; [ "$rest" != "${rest%:ro}" ] && opts=-oro
		mkdir -p "$path"
		mount -t virtiofs $opts "$tag" "$path"
		;;
	esac
done
echo "baseline: ready $(cut -d' ' -f1 /proc/uptime)"
status=0
sh -e /xchg/job.sh || status=$?
echo "baseline: exit status $status at $(cut -d' ' -f1 /proc/uptime)"
sync
echo "$status" > /xchg/status
umount /xchg 2>/dev/null
reboot -f
INIT
	chmod 755 "$dir/init"
	(cd "$dir" && find . | cpio -o -H newc --quiet) > "$1/initramfs.cpio"
	echo "$1/initramfs.cpio"
}

# baseline_run KERNEL MEM DISK JOB [TAG=DIR[:ro]]...
baseline_run() {
	local kernel=$1 mem=$2 disk=$3 job=$4
	shift 4
	local tmp
	tmp=$(mktemp -d)
	local initrd
	initrd=$(baseline_initramfs "$tmp")
	local xchg=$tmp/xchg
	mkdir -p "$xchg"
	cp "$job" "$xchg/job.sh"
	local args=() shares=("xchg=$xchg") pids=() cmd_shares="baseline.share=xchg=/xchg"
	for s in "$@"; do shares+=("$s"); done
	local i=0
	for s in "${shares[@]}"; do
		local tag=${s%%=*} rest=${s#*=}
		local dir=${rest%:ro}
		/usr/lib/qemu/virtiofsd --socket-path="$tmp/vfsd$i.sock" -o source="$dir" -o cache=auto \
			>/dev/null 2>"$tmp/vfsd$i.log" </dev/null &
		pids+=($!)
		args+=(-chardev "socket,id=vfs$i,path=$tmp/vfsd$i.sock"
			-device "vhost-user-fs-device,queue-size=1024,chardev=vfs$i,tag=$tag")
		[ "$tag" = xchg ] || cmd_shares+=" baseline.share=$tag=$rest"
		i=$((i + 1))
	done
	for j in $(seq 0 $((i - 1))); do
		for _ in $(seq 100); do [ -S "$tmp/vfsd$j.sock" ] && break; sleep 0.05; done
	done
	if [ -n "$disk" ]; then
		args+=(-drive "file=$disk,format=raw,if=none,id=scratch,cache=writeback"
			-device virtio-blk-device,drive=scratch)
	fi
	# The emulated-host command line rootlayer would use, without the
	# VMM's vector-state port (QEMU has none).
	local cmdline
	cmdline="$("${ROOTLAYER_BIN:?}" boot --print-cmdline) rootlayer_xstate.port=0 rdinit=/init $cmd_shares"
	local rc=0
	# -arch-capabilities: AMD hosts here abort at start otherwise
	# ("failed to set MSR 0x10a").
	qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem -enable-kvm -cpu host,-arch-capabilities -smp 1 \
		-m "${mem}M" -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" \
		-nodefaults -no-user-config -nographic -serial stdio -no-reboot -device i8042 \
		-global virtio-mmio.force-legacy=false \
		-kernel "$kernel" -initrd "$initrd" -append "$cmdline" "${args[@]}" </dev/null || rc=$?
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	local status
	status=$(cat "$xchg/status" 2>/dev/null || echo "none (qemu exit $rc)")
	[ -n "${BASELINE_KEEP:-}" ] || rm -rf "$tmp"
	[ "$status" = 0 ] || { echo "baseline: job failed: $status" >&2; return 1; }
}
