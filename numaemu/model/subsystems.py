"""Which kernel subsystem a text function belongs to, from its name and its link order (pure).

A vmlinux is linked directory by directory (the top-level Makefile's ``core-y``, ``drivers-y``,
``net-y``, ``libs-y``; arch/x86/kernel/vmlinux.lds.S gathers each object's ``.text``), so the
functions of one source file sit together, and a file's static helpers sit between its public
functions. Two steps follow from that:

1. a function whose name has a subsystem's prefix (``tcp_``, ``ext4_``, ``folio``, ...) belongs to
   it (`RULES`, checked in order; the first that matches wins, so ``mem_cgroup`` is mm before
   ``mem`` is lib);
2. a function no rule names takes the subsystem of its neighbours in link order when the nearest
   named function before it and the nearest after it agree (a helper between two fs functions is
   fs); otherwise it is ``other`` (kernel/, arch/, security/, crypto/: no subsystem of their own
   here).

``entry`` is the syscall, exception and interrupt entry code (arch/x86/entry/, the
``.entry.text`` and ``.noinstr.text`` the linker script puts together).

An image without symbols has no names: its functions are cut by index in link order with the
shares `SHARES` (the embedded image's, measured from its names by `shares`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from numaemu.model.arrays import I64

__all__ = ["SUBSYSTEMS", "OTHER", "SHARES", "RULES", "subsystem_of_name", "classify", "by_index", "shares"]

SUBSYSTEMS = ("entry", "sched", "mm", "fs", "block", "net", "drivers", "lib", "other")
OTHER = SUBSYSTEMS.index("other")

# Share of text functions by subsystem in the embedded image (Debian 6.12.118 cloud amd64, 50,646
# functions, each under its first name), measured with `shares(classify(names))`; used only for
# images that have no symbols. "other" is half: kernel/, arch/x86, security/, crypto/, and names
# no rule knows between neighbours that disagree.
SHARES: tuple[float, ...] = (0.004, 0.018, 0.05, 0.083, 0.018, 0.118, 0.161, 0.041, 0.507)

_ENTRY = ("entry_", "asm_", "do_syscall_", "syscall_", "x64_sys_call", "ret_from_fork", "irqentry_", "exit_to_user_mode", "__irqentry", "exc_", "sysvec_",
          "common_interrupt", "native_irq_return", "error_entry", "error_return", "paranoid_", "xen_error_entry", "__x64_sys_ni_syscall", "restore_regs_and_return")
_SCHED = ("schedule", "__schedule", "sched_", "__sched", "pick_next", "enqueue_", "dequeue_", "update_curr", "try_to_wake_up", "wake_up", "__wake_up",
          "finish_task_switch", "psi_", "cpuacct", "task_tick", "load_balance", "select_task_rq", "check_preempt", "set_next_entity", "put_prev", "update_load_avg",
          "__update_load_avg", "update_cfs", "update_rq", "hrtick", "yield", "do_sched_yield", "autoremove_wake_function", "default_wake_function", "prepare_to_wait",
          "finish_wait", "futex", "__futex", "rt_mutex", "__rt_mutex", "mutex_", "__mutex", "down_", "up_", "rwsem", "__rwsem", "complete", "wait_for_completion",
          "wait_woken", "woken_wake_function", "idle_", "do_idle", "cpu_idle", "play_idle", "account_", "cputime", "vtime_", "pick_", "newidle", "resched", "scheduler_",
          "sugov", "cpupri", "rto_", "dl_", "__dl", "rt_rq", "throttle_", "unthrottle_", "tg_", "set_user_nice", "wake_q", "ttwu", "activate_task", "deactivate_task",
          "sys_sched", "__x64_sys_sched", "__x64_sys_futex", "__x64_sys_nanosleep", "__x64_sys_clock_nanosleep", "hrtimer_nanosleep", "do_nanosleep")
_MM = ("mm_", "__mm", "vm_", "__vm", "vma", "__vma", "mmap", "do_mmap", "munmap", "do_munmap", "do_vmi", "__do_munmap", "page", "__page", "folio", "__folio", "alloc_page",
       "__alloc_page", "free_page", "__free_page", "free_unref", "free_pcp", "free_pages", "rmqueue", "get_page_from_freelist", "kmem_", "kmalloc", "__kmalloc", "kfree",
       "kvfree", "kvmalloc", "krealloc", "slab", "__slab", "___slab", "memcg", "__memcg", "mem_cgroup", "__mem_cgroup", "obj_cgroup", "handle_mm_fault", "__handle_mm_fault",
       "do_anonymous_page", "do_wp_page", "wp_page", "do_fault", "do_read_fault", "do_cow_fault", "do_shared_fault", "do_swap_page", "do_huge", "copy_page_range",
       "copy_pte", "copy_pmd", "copy_pud", "copy_p4d", "copy_present", "copy_nonpresent", "zap_", "unmap_", "free_pgtables", "free_pgd", "free_p4d", "free_pud", "free_pmd",
       "free_pte", "tlb_", "__tlb", "flush_tlb", "lru_", "__lru", "shmem", "filemap", "__filemap", "pagecache", "rmap", "anon_vma", "__anon_vma", "pte_", "__pte", "pmd_",
       "__pmd", "pud_", "__pud", "p4d_", "pgd_", "__pgd", "pgtable", "mlock", "munlock", "__mlock", "__munlock", "populate_vma", "mm_populate", "__mm_populate", "pcpu_",
       "vmalloc", "__vmalloc", "vfree", "vmap", "__vmap", "vunmap", "get_user_pages", "__get_user_pages", "gup_", "follow_page", "swap", "__swap", "zone_", "__zone", "node_",
       "compact", "khugepaged", "hugepage", "huge_", "hugetlb", "mempolicy", "mpol_", "migrate_", "kswapd", "shrink_", "memblock", "set_pte", "clear_page", "copy_user_highpage",
       "readahead", "page_cache", "find_get_page", "find_lock", "pagevec", "release_pages", "truncate_", "invalidate_mapping", "writeback", "wb_", "balance_dirty",
       "set_page_dirty", "mark_page", "workingset", "vmstat", "__mod_", "mod_node", "mod_zone", "__inc_", "__dec_", "inc_node", "dec_node", "get_unmapped_area",
       "arch_get_unmapped_area", "unmapped_area", "vm_unmapped_area", "expand_stack", "mprotect", "do_mprotect", "madvise", "do_madvise", "mremap", "msync", "ksm_", "userfaultfd",
       "uffd", "dup_mmap", "dup_mm", "mmput", "__mmput", "exit_mmap", "mm_init", "mm_alloc", "kasan", "kmemleak", "kfence", "__x64_sys_mmap", "__x64_sys_munmap",
       "__x64_sys_brk", "__x64_sys_mprotect", "__x64_sys_madvise", "ksys_mmap", "do_brk", "__x64_sys_mlock", "__x64_sys_munlock")
_FS = ("vfs_", "__vfs", "do_sys_open", "do_sys_openat", "do_filp_open", "path_", "filename_", "getname", "putname", "dput", "dget", "d_", "__d_", "dentry", "__dentry", "inode",
       "__inode", "iput", "__iget", "igrab", "ihold", "iget", "file", "__file", "alloc_file", "alloc_empty_file", "fput", "__fput", "____fput", "fget", "__fget", "fd_",
       "__fd", "close_fd", "__close_fd", "get_unused_fd", "put_unused_fd", "alloc_fd", "ext4", "__ext4", "jbd2", "__jbd2", "proc_", "seq_", "single_open", "single_release",
       "sysfs_", "kernfs_", "mnt", "__mnt", "mount", "do_mount", "path_mount", "do_new_mount", "vfsmount", "namei", "lookup_", "__lookup", "link_path_walk", "walk_component",
       "may_open", "do_dentry_open", "generic_file", "generic_perform_write", "generic_write", "iomap", "fsnotify", "__fsnotify", "fsnotify_", "dnotify", "inotify", "fanotify",
       "eventpoll", "ep_", "do_epoll", "__x64_sys_epoll", "pipe", "splice", "do_splice", "__do_splice", "do_select", "core_sys_select", "poll_", "do_sys_poll", "do_poll",
       "ksys_", "new_sync", "rw_verify", "sb_", "super", "alloc_super", "sget", "fs_", "vfs", "simple_", "xattr", "__xattr", "posix_acl", "locks_", "__locks", "flock", "fcntl",
       "do_fcntl", "ioctl", "do_vfs_ioctl", "nfs", "fuse", "ovl_", "btrfs", "xfs", "fat_", "vfat", "tmpfs", "ramfs", "devpts", "chrdev", "cdev", "char_dev", "memory_open",
       "open_", "do_open", "__x64_sys_open", "__x64_sys_close", "__x64_sys_read", "__x64_sys_write", "__x64_sys_pread", "__x64_sys_pwrite", "__x64_sys_fsync",
       "__x64_sys_fdatasync", "__x64_sys_newfstat", "__x64_sys_statx", "__x64_sys_lseek", "__x64_sys_mount", "__x64_sys_umount", "__x64_sys_fcntl", "__x64_sys_ioctl",
       "__x64_sys_dup", "__x64_sys_getdents", "__x64_sys_readlink", "__x64_sys_access", "__x64_sys_faccessat", "__x64_sys_newfstatat", "__x64_sys_pipe", "__x64_sys_select",
       "__x64_sys_poll", "__x64_sys_ppoll", "__x64_sys_pselect", "__x64_sys_splice", "__x64_sys_sendfile", "__x64_sys_chdir", "__x64_sys_unlink", "__x64_sys_rename",
       "__x64_sys_mkdir", "__x64_sys_rmdir", "do_unlinkat", "do_renameat", "do_mkdirat", "do_rmdir", "do_faccessat", "do_statx", "vfs_statx", "cp_new_stat", "cp_statx",
       "do_readlinkat", "dcache", "__dcache", "shrink_dcache", "dquot", "quota", "mark_buffer", "__mark_inode", "buffer_", "__buffer", "block_write", "block_read",
       "__block_write", "create_empty_buffers", "end_buffer", "touch_atime", "atime", "file_update_time", "generic_update_time", "notify_change", "setattr", "getattr",
       "locked_inode", "evict", "clear_inode", "task_work", "__x64_sys_openat", "__x64_sys_creat", "do_truncate", "do_sys_truncate", "do_sys_ftruncate", "sync_", "__sync",
       "ksys_sync", "do_fsync", "exportfs", "aio_", "__x64_sys_io", "io_uring", "__io_", "io_")
_BLOCK = ("blk", "__blk", "bio", "__bio", "submit_bio", "elv_", "elevator", "bdev", "blkdev", "bd_", "dd_", "kyber", "bfq", "disk_", "part_", "bsg", "badblocks", "blkcg",
          "__submit_bio", "mq_", "block_", "set_capacity", "add_disk", "del_gendisk", "genhd", "get_disk", "put_disk", "ioprio", "bvec")
_NET = ("tcp", "__tcp", "udp", "__udp", "ip_", "__ip", "ipv4", "ipv6", "ip6", "__ip6", "inet", "__inet", "sock", "__sock", "sk_", "__sk", "skb", "__skb", "kfree_skb",
        "consume_skb", "alloc_skb", "__alloc_skb", "netif", "__netif", "net_", "__net", "netdev", "__netdev", "dev_queue", "__dev_queue", "dev_hard_start", "napi", "__napi",
        "neigh", "__neigh", "arp_", "nf_", "__nf", "nft_", "xt_", "ipt_", "xfrm", "__xfrm", "unix_", "netlink", "__netlink", "nlmsg", "rtnl", "rtnetlink", "__sys_", "___sys_",
        "__x64_sys_sendto", "__x64_sys_sendmsg", "__x64_sys_sendmmsg", "__x64_sys_recv",
        "devlink", "ndo_", "rtm_", "nl80211", "cfg80211", "dcb", "ethnl", "__x64_sys_socket", "__x64_sys_connect", "__x64_sys_accept", "__x64_sys_bind", "__x64_sys_listen", "__x64_sys_setsockopt",
        "__x64_sys_getsockopt", "__x64_sys_shutdown", "__x64_sys_getsockname", "__x64_sys_getpeername", "raw_v", "rawv6", "icmp", "fib", "__fib", "dst_", "__dst", "rt_",
        "rt6_", "ip_route", "tcf_", "qdisc", "__qdisc", "sch_", "pfifo", "packet_", "af_", "sockfs", "lock_sock", "release_sock", "__release_sock", "datagram", "__datagram",
        "skb_", "csum_and_copy", "ethtool", "eth_", "br_", "vlan_", "bond_", "dev_get", "dev_set", "dev_change", "dev_open", "dev_close", "dev_ioctl", "register_netdev",
        "flow_", "__flow", "gro_", "__gro", "gso_", "tso_", "mptcp", "sctp", "dccp", "l2tp", "bpf_sk", "sk_filter", "reuseport", "cookie_v", "syn_", "scm_", "cmsghdr",
        "put_cmsg", "move_addr", "copy_msghdr", "sendmsg", "recvmsg", "wireguard", "tun_", "veth", "macvlan", "ipvlan", "vxlan", "geneve", "gre", "ipip", "sit_", "ping_")
_DRIVERS = ("virtio", "vring", "virtnet", "virtblk", "virtqueue", "pci", "__pci", "acpi", "tty", "n_tty", "__tty", "uart", "serial", "usb", "hid_", "input_", "drm_", "nvme",
            "ahci", "ata_", "__ata", "scsi", "__scsi", "sd_", "sr_", "dm_", "md_", "raid", "i2c", "gpio", "clk_", "regulator", "device_", "__device", "driver_", "bus_",
            "platform_", "dma_", "__dma", "iommu", "intel_iommu", "amd_iommu", "power_", "pm_", "__pm", "rpm_", "cpufreq", "cpuidle", "thermal", "hwmon", "edac", "efi",
            "fb_", "fbcon", "con_", "vt_", "vc_", "kbd", "mousedev", "evdev", "rtc_", "watchdog", "get_random", "random_", "_get_random", "crng", "urandom", "hv_", "vmbus",
            "xenbus", "xen_blk", "xennet", "nvdimm", "nd_", "dax_", "firmware", "devres", "devm_", "kobj_", "class_", "attribute_container", "mem_open", "mmap_mem",
            "read_mem", "write_mem", "null_", "read_null", "write_null", "read_zero", "mmap_zero", "memory_lseek", "misc_", "char_", "hpet", "tpm", "ptp_", "pps_", "e1000",
            "igb", "ixgbe", "ena_", "gve_", "mlx", "vfio", "vhost", "nvmem", "of_", "fwnode", "software_node", "component_", "regmap", "spi_", "mdio", "phy_", "genphy",
            "mii_", "loop_", "lo_", "cdrom", "floppy", "agp", "vga", "vgacon", "dummycon", "ps2", "i8042", "serio", "atkbd", "psmouse", "led_", "backlight", "mmc", "sdhci")
_LIB = ("mas_", "__mas", "mtree", "mt_", "maple", "idr_", "ida_", "xa_", "__xa", "xas_", "radix_tree", "__radix", "rb_", "__rb", "list_", "__list", "string", "str", "__str",
        "memcpy", "__memcpy", "memset", "__memset", "memmove", "__memmove", "memcmp", "__memcmp", "memchr", "memscan", "bcmp", "sprintf", "vsprintf", "vsnprintf", "snprintf",
        "scnprintf", "vscnprintf", "kasprintf", "kvasprintf", "kstrto", "_kstrto", "simple_strto", "bitmap", "__bitmap", "find_next", "_find_", "find_first", "find_last",
        "crc", "__crc", "sha1", "sha256", "sha512", "siphash", "jhash", "lz4", "LZ4", "zstd", "ZSTD", "zlib", "zlib_", "inflate", "deflate", "xz_", "lzo", "lzma", "sort",
        "bsearch", "cpumask", "__cpumask", "klist", "refcount", "percpu_counter", "__percpu_counter", "percpu_ref", "rhashtable", "rht_", "__rht", "iov_iter", "_copy_to_user",
        "_copy_from_user", "copy_user", "__copy_user", "clear_user", "__clear_user", "strncpy_from_user", "strnlen_user", "csum", "__csum", "ioread", "iowrite", "dump_stack",
        "seq_buf", "ubsan", "lockref", "errseq", "llist", "timerqueue", "plist", "uuid", "guid", "match_", "btree", "assoc_array", "kobject", "kset", "kobj", "hex_", "bin2hex",
        "hex2bin", "int_sqrt", "gcd", "lcm", "div64", "__div64", "rational", "reciprocal", "prandom", "get_option", "parse_args", "next_arg", "memparse", "glob_", "ts_",
        "textsearch", "ddebug", "__dynamic", "fprop", "flex_", "generic_radix", "genradix", "sg_", "__sg", "scatterwalk", "digsig", "mpi_", "asn1", "oid_", "base64", "utf8",
        "ucs2", "nla_", "__nla", "nlattr", "is_vmalloc", "dql_", "cordic", "irq_poll", "stackdepot", "stack_depot", "__stack_depot", "once_", "__do_once", "fault_in", "errname",
        "___ratelimit", "__ratelimit", "kstrdup", "kstrndup", "kmemdup", "argv_", "cmdline", "check_zeroed_user", "copy_from_kernel", "copy_to_kernel", "__get_user",
        "__put_user", "memweight", "hweight", "__sw_hweight", "_parse_integer", "simple_strtoul", "strscpy")
# kernel/, arch/x86, security/, crypto/: named as "other", so that their static helpers are too.
_OTHER = ("__SCT__", "security_", "aa_", "apparmor", "selinux", "avc_", "ima_", "evm_", "integrity_", "key_", "keyring", "crypto_", "sgx_", "kthread", "get_kthread", "rcu_", "__rcu",
          "trace_", "__trace", "perf_", "__perf", "bpf", "__bpf", "cgroup", "__cgroup", "css_", "audit", "__audit", "irq_", "__irq", "handle_irq", "timer", "__timer", "hrtimer",
          "__hrtimer", "clockevents", "clocksource", "tick_", "__tick", "ktime", "posix_", "signal", "do_signal", "send_signal", "__send_signal", "kill_", "copy_process",
          "kernel_clone", "do_exit", "__do_exit", "exit_", "do_wait", "wait_task", "pid", "__pid", "alloc_pid", "free_pid", "task_", "__task", "cred", "__cred", "cap_",
          "module", "__module", "kprobe", "ftrace", "__ftrace", "static_key", "jump_label", "text_poke", "printk", "vprintk", "_printk", "console", "workqueue", "queue_work",
          "__queue_work", "worker_", "process_one_work", "smp_", "__smp", "stop_machine", "multi_cpu_stop", "cpuhp", "notifier", "panic", "__x64_sys_kill", "__x64_sys_clone",
          "__x64_sys_fork", "__x64_sys_vfork", "__x64_sys_exit", "__x64_sys_wait", "__x64_sys_getpid", "__x64_sys_getppid", "__x64_sys_gettid", "__x64_sys_uname",
          "__x64_sys_prctl", "__x64_sys_rt_sig", "__x64_sys_pause", "__x64_sys_getuid", "__x64_sys_setuid", "xen_", "__xen", "kvm_", "x86_", "native_", "intel_", "amd_",
          "apic", "__apic", "x2apic", "lapic", "ioapic", "mce_", "microcode", "fpu_", "__fpu", "fpregs", "xsave", "xfeature", "arch_", "setup_", "do_", "sys_", "__sys",
          "acct_", "taskstats", "delayacct", "uprobe", "seccomp", "ptrace", "__ptrace", "user_", "ns_", "put_user_ns", "sysctl", "proc_do", "lockdep", "__lock", "lock_",
          "_raw_", "queued_", "__pv_queued", "osq_", "static_call", "kallsyms", "jiffies", "time", "__time", "ntp_", "alarm", "itimer", "swait", "__swait", "rcuwait")

# Checked in order: entry first (exc_page_fault is the entry, not mm), then the subsystems whose
# prefixes are the most specific; "other" last, since its prefixes are the broadest (do_, time).
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry", _ENTRY),
    ("mm", _MM),
    ("sched", _SCHED),
    ("block", _BLOCK),
    ("net", _NET),
    ("fs", _FS),
    ("drivers", _DRIVERS),
    ("lib", _LIB),
    ("other", _OTHER),
)


# All rules as one regular expression, a named group a subsystem in RULES' order, each group a trie
# of its prefixes: a match tries the groups left to right, so the first rule that matches wins, as
# in RULES (50,000 names in ~0.05 s instead of ~0.3 s with str.startswith or a flat alternation,
# paid by every process that builds a workload).
_Trie = dict[str, "_Trie"]


def _trie(words: Sequence[str]) -> str:
    """A regular expression matching any of `words`, as a trie (``a(?:b|c)``): Python's re tries
    the alternatives of a flat ``ab|ac|...`` one by one, ~900 of them; a trie fails at the first
    character that no word continues."""
    tree: _Trie = {}
    for w in words:
        node = tree
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def emit(node: _Trie) -> str:
        ends = "" in node
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if ends else body  # a shorter word ends here: the rest is optional

    return emit(tree)


_PATTERN = re.compile("|".join(f"(?P<{sub}>{_trie(prefixes)})" for sub, prefixes in RULES))
_INDEX = {sub: SUBSYSTEMS.index(sub) for sub, _ in RULES}


def subsystem_of_name(name: str) -> int:
    """The subsystem a name's prefix gives, or -1."""
    base = name.split(".", 1)[0]  # compiler suffixes: foo.isra.0, foo.cold, foo.part.0, foo.constprop.0
    m = _PATTERN.match(base)
    return -1 if m is None or m.lastgroup is None else _INDEX[m.lastgroup]


def classify(names: Sequence[str]) -> I64:
    """The subsystem index (into `SUBSYSTEMS`) of each function, `names` in link order."""
    got = np.array([subsystem_of_name(n) for n in names], dtype=np.int64)
    named = np.flatnonzero(got >= 0)
    out = got.copy()
    unnamed = np.flatnonzero(got < 0)
    if len(named) == 0:
        out[:] = OTHER
        return out
    # The nearest named function before and after each unnamed one, in link order.
    after = np.searchsorted(named, unnamed)
    before = after - 1
    has_both = (before >= 0) & (after < len(named))
    prev = np.where(before >= 0, got[named[np.maximum(before, 0)]], -2)
    nxt = np.where(after < len(named), got[named[np.minimum(after, len(named) - 1)]], -3)
    out[unnamed] = np.where(has_both & (prev == nxt), prev, OTHER)
    return out


def by_index(n_functions: int) -> I64:
    """An image without symbols: its functions cut by index in link order with `SHARES`."""
    bounds = np.round(np.cumsum((0.0,) + SHARES) * n_functions).astype(np.int64)
    bounds[-1] = n_functions
    return np.repeat(np.arange(len(SUBSYSTEMS), dtype=np.int64), np.diff(bounds))


def shares(codes: I64) -> tuple[float, ...]:
    """Each subsystem's share of the functions `codes` classifies."""
    counts = np.bincount(codes, minlength=len(SUBSYSTEMS))
    return tuple(round(float(c) / max(1, len(codes)), 3) for c in counts)
