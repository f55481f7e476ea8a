// SPDX-License-Identifier: GPL-2.0
/*
 * xpmem-agent: runs commands for the host over virtio-vsock, so a harness (or
 * a user, with `xpmem-vmm exec`) gets a command's stdout, stderr and exit code
 * without typing into a serial console.
 *
 *   xpmem-agent [--port P] [--main]
 *
 * Listens on vsock port P (default 5252) and accepts connections from the
 * host only (CID 2): the monitor routes guest-to-guest vsock too, and another
 * VM must not run commands here. Each connection is served by its own child
 * process, so commands run side by side. Protocol (one request per
 * connection; every header is one text line):
 *
 *   host -> agent   RUN <timeout-seconds> <shell command>\n
 *                   EXIT <code>\n      with --main (the agent is the VM's
 *                                      command), the agent exits with <code>
 *                                      (the init then reports it and powers
 *                                      off); refused otherwise
 *   agent -> host   O <n>\n + n bytes  the command's stdout
 *                   E <n>\n + n bytes  its stderr
 *                   X <code>\n         it ended: its exit status, 128 + the
 *                                      signal that killed it, or 124 when the
 *                                      agent killed it at the timeout
 *                   F <reason>\n       the request was refused
 *
 * The command runs under /bin/sh -c in its own session with stdin from
 * /dev/null; at the timeout its whole process group gets SIGKILL. Writes to
 * the host block when the host does not read (vsock credit), so a command's
 * output never piles up in the agent or in the monitor.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define DEFAULT_PORT	5252
#define MAX_REQUEST	65536	/* bytes of one request line */
#define REQUEST_WAIT	30	/* s for the request line to arrive */
#define MAX_TIMEOUT	86400	/* s: longest command timeout */

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void log_line(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "xpmem-agent: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static bool write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= n;
	}
	return true;
}

static bool send_frame(int fd, char kind, const void *data, size_t len)
{
	char head[32];
	int n = snprintf(head, sizeof(head), "%c %zu\n", kind, len);

	return write_all(fd, head, n) && write_all(fd, data, len);
}

static bool send_line(int fd, const char *fmt, ...)
{
	char line[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	return write_all(fd, line, n);
}

/* One request line, NUL-terminated without its newline; NULL if none came. */
static char *read_request(int fd)
{
	char *line = malloc(MAX_REQUEST + 1);
	double end = now() + REQUEST_WAIT;
	size_t got = 0;

	if (!line)
		return NULL;
	while (got < MAX_REQUEST) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int left = (int)((end - now()) * 1000);
		ssize_t n;

		if (left <= 0 || poll(&pfd, 1, left) <= 0)
			break;
		n = read(fd, line + got, 1);
		if (n <= 0)
			break;
		if (line[got] == '\n') {
			line[got] = 0;
			return line;
		}
		got++;
	}
	free(line);
	return NULL;
}

/* Runs @cmd for the host on @fd; returns what X reported. */
static int run_command(int fd, const char *cmd, long timeout)
{
	int out[2], err[2], status = 0, code, devnull;
	struct pollfd pfd[2];
	double end = now() + timeout;
	bool timed_out = false;
	char buf[65536];
	pid_t pid;

	if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		send_line(fd, "F pipe: %s\n", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		send_line(fd, "F fork: %s\n", strerror(errno));
		return -1;
	}
	if (!pid) {
		setsid();
		signal(SIGPIPE, SIG_DFL);
		devnull = open("/dev/null", O_RDONLY);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	close(err[1]);
	pfd[0] = (struct pollfd){ .fd = out[0], .events = POLLIN };
	pfd[1] = (struct pollfd){ .fd = err[0], .events = POLLIN };
	while (pfd[0].fd >= 0 || pfd[1].fd >= 0) {
		int left = (int)((end - now()) * 1000), i;

		if (left <= 0) {
			timed_out = true;
			break;
		}
		if (poll(pfd, 2, left) < 0 && errno != EINTR)
			break;
		for (i = 0; i < 2; i++) {
			ssize_t n;

			if (pfd[i].fd < 0 || !pfd[i].revents)
				continue;
			n = read(pfd[i].fd, buf, sizeof(buf));
			if (n > 0) {
				if (!send_frame(fd, i ? 'E' : 'O', buf, n)) {
					/* The host went away: stop the command. */
					kill(-pid, SIGKILL);
					waitpid(pid, NULL, 0);
					return -1;
				}
			} else if (n == 0 || errno != EINTR) {
				close(pfd[i].fd);
				pfd[i].fd = -1;
			}
		}
	}
	if (timed_out) {
		/* The group, and the child itself in case it has not called setsid yet. */
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
		snprintf(buf, sizeof(buf), "xpmem-agent: killed after the %ld s timeout\n",
			 timeout);
		send_frame(fd, 'E', buf, strlen(buf));
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (timed_out)
		code = 124;
	else if (WIFSIGNALED(status))
		code = 128 + WTERMSIG(status);
	else
		code = WEXITSTATUS(status);
	send_line(fd, "X %d\n", code);
	return code;
}

/*
 * Serves one connection; writes the code of an EXIT request to @exit_fd, or
 * refuses it when @exit_fd is -1 (the agent is not the VM's command).
 */
static void serve(int fd, int exit_fd)
{
	char *req = read_request(fd), *cmd;
	long v;

	signal(SIGCHLD, SIG_DFL);
	if (!req) {
		send_line(fd, "F no request line within %d s (or longer than %d bytes)\n",
			  REQUEST_WAIT, MAX_REQUEST);
		return;
	}
	if (!strncmp(req, "RUN ", 4)) {
		v = strtol(req + 4, &cmd, 10);
		if (cmd == req + 4 || *cmd != ' ' || v < 1 || v > MAX_TIMEOUT) {
			send_line(fd, "F RUN needs a timeout of 1..%d s and a command\n",
				  MAX_TIMEOUT);
		} else {
			run_command(fd, cmd + 1, v);
		}
	} else if (!strncmp(req, "EXIT ", 5) && exit_fd < 0) {
		send_line(fd, "F this agent runs beside the VM's command (not xpmem.run=agent): it does not exit\n");
	} else if (!strncmp(req, "EXIT ", 5)) {
		int code = atoi(req + 5) & 0xff;

		send_line(fd, "X 0\n");
		if (write(exit_fd, &code, sizeof(code)) != sizeof(code))
			log_line("cannot hand the EXIT code on: %s", strerror(errno));
	} else {
		send_line(fd, "F unknown request '%.40s'; use RUN or EXIT\n", req);
	}
	free(req);
}

int main(int argc, char **argv)
{
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
				  .svm_port = DEFAULT_PORT };
	int lfd, exit_pipe[2], i;
	bool main_command = false;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc) {
			sa.svm_port = strtoul(argv[++i], NULL, 0);
		} else if (!strcmp(argv[i], "--main")) {
			main_command = true;
		} else {
			fprintf(stderr, "usage: xpmem-agent [--port P] [--main]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	/* Handlers are reaped by the kernel; each one waits for its own command. */
	signal(SIGCHLD, SIG_IGN);
	if (pipe2(exit_pipe, O_CLOEXEC)) {
		log_line("pipe: %s", strerror(errno));
		return 1;
	}
	lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 16)) {
		log_line("cannot listen on vsock port %u: %s (is vmw_vsock_virtio_transport loaded?)",
			 sa.svm_port, strerror(errno));
		return 1;
	}
	log_line("listening on vsock port %u", sa.svm_port);
	for (;;) {
		struct pollfd pfd[2] = { { .fd = lfd, .events = POLLIN },
					 { .fd = exit_pipe[0], .events = POLLIN } };
		struct sockaddr_vm peer;
		socklen_t len = sizeof(peer);
		int fd, code;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_line("poll: %s", strerror(errno));
			return 1;
		}
		if (pfd[1].revents) {
			if (read(exit_pipe[0], &code, sizeof(code)) == sizeof(code)) {
				log_line("exiting with %d at the host's request", code);
				return code;
			}
		}
		if (!pfd[0].revents)
			continue;
		fd = accept4(lfd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		if (peer.svm_cid != VMADDR_CID_HOST) {
			log_line("refused a connection from CID %u: only the host may run commands",
				 peer.svm_cid);
			send_line(fd, "F only the host (CID 2) may use this agent\n");
			close(fd);
			continue;
		}
		if (fork() == 0) {
			close(lfd);
			serve(fd, main_command ? exit_pipe[1] : -1);
			_exit(0);
		}
		close(fd);
	}
}
