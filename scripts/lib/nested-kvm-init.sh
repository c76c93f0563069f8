#!/bin/sh
# /init of the L1 VM of scripts/nested-kvm (QEMU TCG, a CPU with SVM): load
# kvm_amd, then run rootlayer on that KVM: a cold boot, the avx self-test, a
# boot taking a snapshot and one restored from it, the README example without
# and with snapshots, a job on a two-layer base with whiteouts. Everything
# goes to the serial console; the lines starting `@@ ` are the result, read
# by tests/hardware_kvm_nested.rs:
#
#   @@ step NAME rc=N secs=S    each step, bounded by T seconds (kernel
#                                command line: T=..., NESTED_INPUTS=DIR)
#   @@ NAME| LINE               the step's rootlayer and agent lines (all
#                                its last lines if it failed)
#   @@ NAME json {...}          a job's --json result
#   @@ end                      L1 got to the end
/bin/busybox --install -s /bin
# The work space is a tmpfs of its own (snapshots are sparse files); the
# inputs stay where scripts/nested-kvm put them (the host's path, often
# under /tmp).
w=/nested-kvm-work
export PATH=/opt/rootlayer/bin:/bin HOME=/root TMPDIR=$w ROOTLAYER_CACHE=$w/cache
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p $w
mount -t tmpfs -o size=90% work $w
exec </dev/console >/dev/console 2>&1
# The heartbeat scripts/nested-kvm watches (a second serial port, so that
# it never splits a line of the results): L1 is alive and its clock runs.
[ -c /dev/ttyS1 ] && (while :; do echo "beat $(cut -d' ' -f1 /proc/uptime)"; sleep 5; done >/dev/ttyS1 2>&1) &
T=${T:-300}
in=${NESTED_INPUTS:?}

# step NAME CMD...: CMD bounded by T seconds; its --json on stdout, its
# rootlayer and agent lines on stderr.
step() {
	name=$1; shift
	echo "=== step $name: $*"
	s=$(date +%s)
	timeout "$T" "$@" >$w/$name.out 2>$w/$name.err
	rc=$?
	cat $w/$name.err
	if [ "$rc" = 0 ]; then
		grep -E 'rootlayer|selftest|vector state|Hypervisor detected|clocksource: Switched|tsc: |x86/fpu: Enabled|XSAVE' $w/$name.err
	else
		# Failed or timed out (124): all of its last lines.
		tail -n 60 $w/$name.err
	fi | sed "s/^/@@ $name| /"
	grep '^{' $w/$name.out | sed "s/^/@@ $name json /"
	[ -f "$w/out-$name/layer.tar" ] && tar -tvf "$w/out-$name/layer.tar"
	echo "@@ step $name rc=$rc secs=$(( $(date +%s) - s ))"
}

echo "@@ l1 uptime $(cut -d' ' -f1 /proc/uptime) at init; kernel $(uname -r)"
echo "@@ l1 cpu $(grep -m1 vendor_id /proc/cpuinfo | cut -d: -f2) /$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
grep -q -w svm /proc/cpuinfo && echo "@@ l1 cpu has svm"
insmod /lib/modules/irqbypass.ko
insmod /lib/modules/kvm.ko
# KVM_AMD (kernel command line): more parameters, comma-separated.
insmod /lib/modules/kvm-amd.ko nested=1 $(echo "${KVM_AMD:-}" | tr ',' ' ')
echo "@@ l1 kvm_amd loaded rc=$? nested=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null) npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null) dev_kvm=$([ -c /dev/kvm ] && echo yes || echo no)"
echo "@@ l1 modules $(ls /sys/module | grep -E '^kvm' | tr '\n' ' ')"
dmesg | grep -i -E 'kvm|svm' | tail -5

echo "@@ cmdline $(rootlayer boot --print-cmdline)"
step boot rootlayer boot --no-snapshot --timeout "$T"
# With the guest kernel's log: how it found the hypervisor, its clock and XSAVE.
step avx rootlayer boot --no-snapshot --timeout "$T" --mem-size 128 --cmdline "ROOTLAYER_SELFTEST=avx loglevel=7" \
	--initrd /opt/rootlayer/share/rootlayer/initramfs-test.cpio

# The avx self-test on two vCPUs (the SMP kernel), where L1 has two CPUs:
# processes moved between them while they hold vector values.
l1_cpus=$(grep -c '^processor' /proc/cpuinfo)
echo "@@ l1_cpus $l1_cpus"
[ "$l1_cpus" -lt 2 ] ||
	step smp-avx rootlayer boot --no-snapshot --timeout "$T" --mem-size 128 --cpus 2 --cmdline "ROOTLAYER_SELFTEST=avx" \
		--initrd /opt/rootlayer/share/rootlayer/initramfs-test.cpio

# A boot that takes a snapshot at READY, then one restored from it.
step boot-take rootlayer boot --timeout "$T"
step boot-restore rootlayer boot --timeout "$T"

job() {
	name=$1 base=$2 script=$3; shift 3
	step "$name" rootlayer run-as-root --from-image "$in/$base" --store "$in/store" --script "$in/$script" \
		--mem-size 256 --disk-size 128 --source-date-epoch 0 --timeout "$T" --json --out "$w/out-$name" "$@"
}
job readme-cold readme-base.tar readme.sh --no-snapshot
job readme-take readme-base.tar readme.sh
job readme-restore readme-base.tar readme.sh
job whiteouts whiteouts-base.tar whiteouts.sh
if [ "$l1_cpus" -ge 2 ]; then
	job readme-smp-take readme-base.tar readme.sh --cpus 2
	job readme-smp-restore readme-base.tar readme.sh --cpus 2
fi
ls -la "$ROOTLAYER_CACHE/snapshots" 2>&1

echo "@@ end uptime $(cut -d' ' -f1 /proc/uptime)"
dmesg | tail -5
poweroff -f
