package gonestsession

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// daemon is a gonest-sessiond process for one test, on a port the OS picks.
type daemon struct {
	cmd  *exec.Cmd
	addr string
}

// binDir is where cargo built gonest-sessiond: $GONEST_BIN_DIR, as .ci/run sets it.
func binDir(t *testing.T) string {
	dir := os.Getenv("GONEST_BIN_DIR")
	if dir == "" {
		t.Fatal("set GONEST_BIN_DIR to the folder of a built gonest-sessiond (cargo build -p gonest-sessiond; then target/debug)")
	}
	return dir
}

var listening = regexp.MustCompile(`"addr":"([^"]+)"`)

// startDaemon starts the daemon with extra flags and waits until it says where it listens; the
// test's cleanup kills it.
func startDaemon(t *testing.T, extra ...string) *daemon {
	t.Helper()
	args := append([]string{"--listen", "127.0.0.1:0", "--log-format", "json"}, extra...)
	cmd := exec.Command(filepath.Join(binDir(t), "gonest-sessiond"), args...)
	cmd.Env = append(os.Environ(), "RUST_LOG=info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start gonest-sessiond: %v", err)
	}
	d := &daemon{cmd: cmd}
	t.Cleanup(d.kill)
	found := make(chan string, 1)
	go func() {
		lines := bufio.NewScanner(stderr)
		for lines.Scan() {
			line := lines.Text()
			if strings.Contains(line, "gonest-sessiond listening") {
				if m := listening.FindStringSubmatch(line); m != nil {
					found <- m[1]
				}
			}
		}
	}()
	select {
	case d.addr = <-found:
	case <-time.After(30 * time.Second):
		t.Fatal("gonest-sessiond did not say where it listens")
	}
	return d
}

func (d *daemon) url() string { return "http://" + d.addr }

func (d *daemon) kill() {
	if d.cmd.ProcessState == nil {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	}
}
