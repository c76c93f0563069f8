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
#   @@ emulator_fault NAME K: L  an attempt K of a step on two vCPUs that
#                                died of the emulator's fault (see
#                                smp_step); its lines come as NAME-faultK
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
# rootlayer and agent lines on stderr. Sets rc; the step's `@@ ` lines go
# to $w/NAME.report (shown by show).
step() {
	name=$1; shift
	echo "=== step $name: $*"
	s=$(date +%s)
	timeout "$T" "$@" >$w/$name.out 2>$w/$name.err
	rc=$?
	cat $w/$name.err
	{
		if [ "$rc" = 0 ]; then
			grep -E 'rootlayer|selftest|vector state|Hypervisor detected|clocksource: Switched|tsc: |x86/fpu: Enabled|XSAVE' $w/$name.err
		else
			# Failed or timed out (124): all of its last lines.
			tail -n 60 $w/$name.err
		fi | sed "s/^/@@ $name| /"
		grep '^{' $w/$name.out | sed "s/^/@@ $name json /"
		echo "@@ step $name rc=$rc secs=$(( $(date +%s) - s ))"
	} > $w/$name.report
	[ -f "$w/out-$name/layer.tar" ] && tar -tvf "$w/out-$name/layer.tar"
	return 0
}
show() { cat $w/$1.report; }

# smp_step NAME CMD...: a step on two vCPUs, run again (at most twice)
# when its guest died of the fault QEMU's TCG gives a two-vCPU guest of
# L1's KVM now and then: an interrupt (an IPI or the APIC timer) taken
# from guest user mode finds a GS base of zero after the entry's SWAPGS,
# as if MSR_KERNEL_GS_BASE had been lost in the emulated SVM's world
# switches, so the guest kernel's entry code faults on its per-CPU data
# until a double fault ("traps: PANIC: double fault", RIP in
# exc_page_fault or error_entry) or a triple fault. Seen in the avx
# self-test on two vCPUs, on either vCPU, in 1 run of 20 with QEMU 10's
# multi-threaded TCG and 9 of 13 with -accel tcg,thread=single, with or
# without FSGSBASE, with kvm_amd vgif=0 too; never on the software KVM,
# where the same kernel and agent run the same test in every run. Any
# other failure, or a third fault, fails the step. A retried "take" step
# starts from no snapshot again.
smp_step() {
	name=$1
	k=0
	while :; do
		step "$@"
		if [ "$rc" = 0 ] || [ $k -ge 2 ] ||
			! grep -q -E 'traps: PANIC: double fault|no result from the agent \(guest triple fault\)' $w/$name.err; then
			show $name
			return
		fi
		k=$((k + 1))
		echo "@@ emulator_fault $name $k: $(grep -m1 -E 'RIP: |guest triple fault' $w/$name.err)"
		sed -e "s/^@@ $name\([| ]\)/@@ $name-fault$k\1/" -e "s/^@@ step $name /@@ step $name-fault$k /" $w/$name.report
		case $name in *-take) rm -f "$ROOTLAYER_CACHE"/snapshots/* ;; esac
	done
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
step boot rootlayer boot --no-snapshot --timeout "$T"; show boot
# With the guest kernel's log: how it found the hypervisor, its clock and XSAVE.
step avx rootlayer boot --no-snapshot --timeout "$T" --mem-size 128 --cmdline "ROOTLAYER_SELFTEST=avx loglevel=7" \
	--initrd /opt/rootlayer/share/rootlayer/initramfs-test.cpio
show avx

# The avx self-test on two vCPUs (the SMP kernel), where L1 has two CPUs:
# processes moved between them while they hold vector values.
l1_cpus=$(grep -c '^processor' /proc/cpuinfo)
echo "@@ l1_cpus $l1_cpus"
[ "$l1_cpus" -lt 2 ] ||
	smp_step smp-avx rootlayer boot --no-snapshot --timeout "$T" --mem-size 128 --cpus 2 --cmdline "ROOTLAYER_SELFTEST=avx" \
		--initrd /opt/rootlayer/share/rootlayer/initramfs-test.cpio

# A boot that takes a snapshot at READY, then one restored from it.
step boot-take rootlayer boot --timeout "$T"; show boot-take
step boot-restore rootlayer boot --timeout "$T"; show boot-restore

# job NAME BASE SCRIPT ARGS...: a run-as-root step (smp_step's where ARGS
# ask for two vCPUs).
job() {
	name=$1 base=$2 script=$3; shift 3
	how=step
	case " $* " in *" --cpus 2 "*) how=smp_step ;; esac
	$how "$name" rootlayer run-as-root --from-image "$in/$base" --store "$in/store" --script "$in/$script" \
		--mem-size 256 --disk-size 128 --source-date-epoch 0 --timeout "$T" --json --out "$w/out-$name" "$@"
	[ $how = smp_step ] || show "$name"
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
