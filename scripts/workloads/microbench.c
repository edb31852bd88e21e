/*
 * The programs numaemu's built-in workloads are recorded from (scripts/record_workloads.sh).
 *
 *   microbench MODE SECONDS
 *
 * Each MODE loops over one kernel operation for SECONDS, the loop the x86 replication series'
 * microbenchmarks time (Kuzin, RFC 00/12, 2023-12-28) or a close stand-in:
 *   getpid     syscall(SYS_getpid) (glibc >= 2.25 no longer caches the pid; syscall() makes sure)
 *   fork       fork(); the child _exit(0)s; waitpid()
 *   fork1024   the same from a process with 1,024 touched pages; the parent then writes one of
 *              them (the copy-on-write fault) before it waits
 *   mmap       mmap() and munmap() of one anonymous page, untouched
 *   mmap_lock  the same with MAP_LOCKED (the page is populated, locked, then zapped)
 *   open       open("/dev/null") and close()
 *   kill       SIGUSR1 to a child that answers with SIGUSR1 (send, wake-up, delivery, both ways)
 *   mount      mount procfs on a scratch directory and unmount it (needs root)
 *   compute    user-space arithmetic, with a 64-byte read of /dev/zero every ~100 us
 *   echo       a 64-byte TCP echo over loopback: the client sends, the forked server echoes
 * It prints the iterations done, so a recording's request rate can be checked.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static volatile sig_atomic_t got;
static void on_usr1(int sig) { (void)sig; got = 1; }

static int die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: microbench MODE SECONDS\n");
		return 2;
	}
	const char *mode = argv[1];
	double end = now() + atof(argv[2]);
	long n = 0;

	if (!strcmp(mode, "getpid")) {
		while (now() < end)
			for (int i = 0; i < 1000; i++, n++)
				syscall(SYS_getpid);
	} else if (!strcmp(mode, "fork") || !strcmp(mode, "fork1024")) {
		int big = !strcmp(mode, "fork1024");
		size_t len = 1024 * 4096;
		char *mem = big ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : NULL;
		if (big)
			memset(mem, 1, len);
		for (; now() < end; n++) {
			pid_t pid = fork();
			if (pid < 0)
				die("fork");
			if (pid == 0)
				_exit(0);
			if (big)
				mem[(n % 1024) * 4096] = 2;
			waitpid(pid, NULL, 0);
		}
	} else if (!strcmp(mode, "mmap") || !strcmp(mode, "mmap_lock")) {
		int flags = MAP_PRIVATE | MAP_ANONYMOUS | (!strcmp(mode, "mmap_lock") ? MAP_LOCKED : 0);
		for (; now() < end; n++) {
			void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, flags, -1, 0);
			if (p == MAP_FAILED)
				die("mmap");
			munmap(p, 4096);
		}
	} else if (!strcmp(mode, "open")) {
		for (; now() < end; n++) {
			int fd = open("/dev/null", O_RDONLY);
			if (fd < 0)
				die("open");
			close(fd);
		}
	} else if (!strcmp(mode, "kill")) {
		sigset_t block, old;
		sigemptyset(&block);
		sigaddset(&block, SIGUSR1);
		signal(SIGUSR1, on_usr1);
		sigprocmask(SIG_BLOCK, &block, &old);
		pid_t parent = getpid(), child = fork();
		if (child == 0) {
			for (;;) {
				while (!got)
					sigsuspend(&old);
				got = 0;
				if (kill(parent, SIGUSR1))
					_exit(0);
			}
		}
		for (; now() < end; n++) {
			kill(child, SIGUSR1);
			while (!got)
				sigsuspend(&old);
			got = 0;
		}
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	} else if (!strcmp(mode, "mount")) {
		char dir[] = "/tmp/numaemu-mount-XXXXXX";
		if (!mkdtemp(dir))
			die("mkdtemp");
		for (; now() < end; n++) {
			if (mount("proc", dir, "proc", 0, NULL))
				die("mount");
			if (umount(dir))
				die("umount");
		}
		rmdir(dir);
	} else if (!strcmp(mode, "compute")) {
		int fd = open("/dev/zero", O_RDONLY);
		char buf[64];
		volatile double x = 1.0;
		for (; now() < end; n++) {
			for (int i = 0; i < 20000; i++)
				x = x * 1.0000001 + 1e-9;
			if (read(fd, buf, sizeof buf) != sizeof buf)
				die("read");
		}
	} else if (!strcmp(mode, "echo")) {
		int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t al = sizeof a;
		if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (struct sockaddr *)&a, &al))
			die("listen");
		pid_t server = fork();
		if (server == 0) {
			int c = accept(ls, NULL, NULL);
			char buf[64];
			ssize_t k;
			setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
			while ((k = read(c, buf, sizeof buf)) > 0)
				if (write(c, buf, k) != k)
					break;
			_exit(0);
		}
		int s = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(s, (struct sockaddr *)&a, sizeof a))
			die("connect");
		setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		char msg[64] = "numaemu echo", back[64];
		for (; now() < end; n++) {
			if (write(s, msg, sizeof msg) != sizeof msg)
				die("write");
			for (size_t got_n = 0; got_n < sizeof back;) {
				ssize_t k = read(s, back + got_n, sizeof back - got_n);
				if (k <= 0)
					die("read");
				got_n += k;
			}
		}
		close(s);
		waitpid(server, NULL, 0);
	} else {
		fprintf(stderr, "microbench: unknown mode '%s'\n", mode);
		return 2;
	}
	printf("%s: %ld iterations\n", mode, n);
	return 0;
}
