package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The Go-client battery against a ttrpc server implementing ferry.test.v1.Interop
// (the C server in the interop test). Each case prints one TAP line.

type testCase struct {
	name string
	run  func(socket string) error
}

var clientCases = []testCase{
	{"echo-metadata", caseEchoMetadata},
	{"deadline-propagation", caseDeadlinePropagation},
	{"deadline-none", caseDeadlineNone},
	{"fail-not-found", caseFailNotFound},
	{"fail-failed-precondition", caseFailFailedPrecondition},
	{"unknown-method", caseUnknownMethod},
	{"unknown-service", caseUnknownService},
	{"pipelined-500-calls-one-connection", casePipelined},
	{"oversize-frame-answered-on-its-stream", caseOversizeFrame},
	{"big-response-fails-connection-survives", caseBigResponse},
	{"deadline-expiry-local", caseDeadlineExpiry},
}

const caseTimeout = 60 * time.Second

// clientMain runs every case in a child process (ferrypeer client-case): ttrpc 1.1.1's
// client panics in its receive goroutine on some peer input (an oversize answer), and
// such a panic must fail one case, not end the whole TAP stream.
func clientMain(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path of the server")
	fs.Parse(args)
	if *socket == "" {
		return fmt.Errorf("-socket is required")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	fmt.Printf("1..%d\n", len(clientCases))
	for i, tc := range clientCases {
		ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
		cmd := exec.CommandContext(ctx, self, "client-case", "-socket", *socket, "-name", tc.name)
		// A case must not outlive the battery (run.sh stops the battery by pid).
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		timedOut := ctx.Err() != nil
		cancel()
		if err == nil {
			fmt.Printf("ok %d - go-client/%s\n", i+1, tc.name)
			continue
		}
		reason := strings.TrimSpace(stderr.String())
		if timedOut {
			reason = fmt.Sprintf("timed out after %v", caseTimeout)
		} else if reason == "" {
			reason = err.Error()
		}
		// The first line says what failed (for a panic: "panic: ..."); the rest goes
		// out as TAP diagnostics.
		lines := strings.Split(reason, "\n")
		fmt.Printf("not ok %d - go-client/%s # %s\n", i+1, tc.name, lines[0])
		for j, line := range lines[1:] {
			if j == 8 {
				break
			}
			if strings.TrimSpace(line) == "" {
				continue
			}
			fmt.Printf("#   %s\n", line)
		}
	}
	return nil
}

// clientCaseMain runs one case: exit status 0 when it passes, else the reason on
// stderr and exit status 1.
func clientCaseMain(args []string) error {
	fs := flag.NewFlagSet("client-case", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path of the server")
	name := fs.String("name", "", "case name")
	fs.Parse(args)
	for _, tc := range clientCases {
		if tc.name == *name {
			return tc.run(*socket)
		}
	}
	return fmt.Errorf("no case %q", *name)
}

// dial opens one ttrpc connection; the caller closes the client.
func dial(socket string) (*ttrpc.Client, error) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	return ttrpc.NewClient(conn), nil
}

func callString(ctx context.Context, c *ttrpc.Client, method, value string) (string, error) {
	var resp types.StringValue
	err := c.Call(ctx, interopService, method, &types.StringValue{Value: value}, &resp)
	return resp.Value, err
}

func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// expectStatus checks that err is a ttrpc status with exactly this code and message.
func expectStatus(err error, code codes.Code, message string) error {
	if err == nil {
		return fmt.Errorf("call succeeded, want code %d %q", code, message)
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("error is not a status: %v", err)
	}
	if st.Code() != code || st.Message() != message {
		return fmt.Errorf("got code %d %q, want code %d %q", st.Code(), st.Message(), code, message)
	}
	return nil
}

// expectEcho checks that the connection still answers an ordinary call.
func expectEcho(c *ttrpc.Client, value string) error {
	ctx, cancel := withTimeout(10 * time.Second)
	defer cancel()
	got, err := callString(ctx, c, "Echo", value)
	if err != nil {
		return fmt.Errorf("Echo after the failure: %v", err)
	}
	if want := value + "|md="; got != want {
		return fmt.Errorf("Echo after the failure: got %q, want %q", got, want)
	}
	return nil
}

func caseEchoMetadata(socket string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := withTimeout(10 * time.Second)
	defer cancel()
	mdctx := ttrpc.WithMetadata(ctx, ttrpc.MD{"x-test": {"hello-md"}, "x-other": {"ignored"}})
	got, err := callString(mdctx, c, "Echo", "ping")
	if err != nil {
		return err
	}
	if got != "ping|md=hello-md" {
		return fmt.Errorf("got %q, want %q", got, "ping|md=hello-md")
	}
	got, err = callString(ctx, c, "Echo", "plain")
	if err != nil {
		return err
	}
	if got != "plain|md=" {
		return fmt.Errorf("without metadata: got %q, want %q", got, "plain|md=")
	}
	return nil
}

func callDeadline(ctx context.Context, c *ttrpc.Client) (string, error) {
	var resp types.StringValue
	err := c.Call(ctx, interopService, "Deadline", &types.Empty{}, &resp)
	return resp.Value, err
}

func caseDeadlinePropagation(socket string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := withTimeout(5 * time.Second)
	defer cancel()
	got, err := callDeadline(ctx, c)
	if err != nil {
		return err
	}
	ms, err := strconv.ParseInt(got, 10, 64)
	if err != nil {
		return fmt.Errorf("server answered %q, want milliseconds", got)
	}
	if ms <= 4000 || ms > 5000 {
		return fmt.Errorf("server saw %d ms left, want (4000, 5000]", ms)
	}
	return nil
}

func caseDeadlineNone(socket string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	got, err := callDeadline(context.Background(), c)
	if err != nil {
		return err
	}
	if got != "none" {
		return fmt.Errorf("got %q, want \"none\"", got)
	}
	return nil
}

func failCase(socket, value string, code codes.Code, message string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := withTimeout(10 * time.Second)
	defer cancel()
	var resp types.Empty
	err = c.Call(ctx, interopService, "Fail", &types.StringValue{Value: value}, &resp)
	if err := expectStatus(err, code, message); err != nil {
		return err
	}
	return expectEcho(c, "after-fail")
}

func caseFailNotFound(socket string) error {
	return failCase(socket, "5:no such thing", codes.NotFound, "no such thing")
}

func caseFailFailedPrecondition(socket string) error {
	return failCase(socket, "9:not now: try later", codes.FailedPrecondition, "not now: try later")
}

func caseUnknownMethod(socket string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := withTimeout(10 * time.Second)
	defer cancel()
	_, err = callString(ctx, c, "Nope", "x")
	return expectStatus(err, codes.Unimplemented, "method Nope")
}

func caseUnknownService(socket string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := withTimeout(10 * time.Second)
	defer cancel()
	var resp types.StringValue
	err = c.Call(ctx, "no.Such", "Echo", &types.StringValue{Value: "x"}, &resp)
	return expectStatus(err, codes.Unimplemented, "service no.Such")
}

// casePipelined keeps 500 calls in flight on one connection: a slow Sleep first,
// then Sleeps with varied short delays and Echos whose answers are unique per call.
// Every goroutine must get its own answer, and the fast calls must finish before the
// slow first one, which proves the server answers out of order.
func casePipelined(socket string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	const n = 500
	ctx, cancel := withTimeout(30 * time.Second)
	defer cancel()

	var (
		mu        sync.Mutex
		failures  []string
		order     int
		slowOrder int
		wg        sync.WaitGroup
	)
	record := func(slow bool, problem string) {
		mu.Lock()
		defer mu.Unlock()
		order++
		if slow {
			slowOrder = order
		}
		if problem != "" && len(failures) < 5 {
			failures = append(failures, problem)
		}
	}

	wg.Add(1)
	go func() {
		defer wg.Done()
		got, err := callString(ctx, c, "Sleep", "600")
		switch {
		case err != nil:
			record(true, fmt.Sprintf("slow Sleep: %v", err))
		case got != "600":
			record(true, fmt.Sprintf("slow Sleep: got %q", got))
		default:
			record(true, "")
		}
	}()
	time.Sleep(20 * time.Millisecond) // let the slow call go out first

	for i := 1; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i%2 == 0 {
				value := strconv.Itoa((i * 7) % 50)
				got, err := callString(ctx, c, "Sleep", value)
				if err != nil {
					record(false, fmt.Sprintf("Sleep %s: %v", value, err))
				} else if got != value {
					record(false, fmt.Sprintf("Sleep %s: got %q", value, got))
				} else {
					record(false, "")
				}
				return
			}
			value := fmt.Sprintf("echo-%d", i)
			md := fmt.Sprintf("m%d", i)
			mdctx := ttrpc.WithMetadata(ctx, ttrpc.MD{"x-test": {md}})
			got, err := callString(mdctx, c, "Echo", value)
			if want := value + "|md=" + md; err != nil {
				record(false, fmt.Sprintf("Echo %s: %v", value, err))
			} else if got != want {
				record(false, fmt.Sprintf("Echo %s: got %q, want %q", value, got, want))
			} else {
				record(false, "")
			}
		}(i)
	}
	wg.Wait()

	if len(failures) > 0 {
		return fmt.Errorf("%s", strings.Join(failures, "; "))
	}
	if slowOrder < n/2 {
		return fmt.Errorf("the 600 ms Sleep finished as call %d of %d: answers were not out of order",
			slowOrder, n)
	}
	return nil
}

// Raw framing for the oversize case, written by hand so that the test does not depend
// on ttrpc internals.

type frame struct {
	length   uint32
	streamID uint32
	typ      byte
	flags    byte
	data     []byte
}

func writeHeader(w io.Writer, length, streamID uint32, typ, flags byte) error {
	var h [10]byte
	binary.BigEndian.PutUint32(h[0:4], length)
	binary.BigEndian.PutUint32(h[4:8], streamID)
	h[8] = typ
	h[9] = flags
	_, err := w.Write(h[:])
	return err
}

func readFrame(r io.Reader) (frame, error) {
	var h [10]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return frame{}, fmt.Errorf("read header: %w", err)
	}
	f := frame{
		length:   binary.BigEndian.Uint32(h[0:4]),
		streamID: binary.BigEndian.Uint32(h[4:8]),
		typ:      h[8],
		flags:    h[9],
	}
	if f.length > 4<<20 {
		return f, fmt.Errorf("answer frame claims %d bytes", f.length)
	}
	f.data = make([]byte, f.length)
	if _, err := io.ReadFull(r, f.data); err != nil {
		return f, fmt.Errorf("read body: %w", err)
	}
	return f, nil
}

func readResponse(r io.Reader, streamID uint32) (*ttrpc.Response, error) {
	f, err := readFrame(r)
	if err != nil {
		return nil, err
	}
	if f.typ != 2 || f.streamID != streamID || f.flags != 0 {
		return nil, fmt.Errorf("got frame type %d stream %d flags %#x, want Response on stream %d",
			f.typ, f.streamID, f.flags, streamID)
	}
	var resp ttrpc.Response
	if err := proto.Unmarshal(f.data, &resp); err != nil {
		return nil, fmt.Errorf("decode Response: %v", err)
	}
	return &resp, nil
}

func caseOversizeFrame(socket string) error {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))

	const claimed = 4<<20 + 1
	// The server may answer as soon as it has seen the header, so the body goes out
	// from another goroutine while this one reads.
	wrote := make(chan error, 1)
	go func() {
		if err := writeHeader(conn, claimed, 1, 1, 0); err != nil {
			wrote <- err
			return
		}
		_, err := conn.Write(make([]byte, claimed))
		wrote <- err
	}()

	resp, err := readResponse(conn, 1)
	if err != nil {
		return err
	}
	if resp.Status == nil {
		return fmt.Errorf("oversize frame answered OK")
	}
	want := "message length 4194305 exceed maximum message size of 4194304"
	if resp.Status.Code != int32(codes.ResourceExhausted) || resp.Status.Message != want {
		return fmt.Errorf("got code %d %q, want code 8 %q", resp.Status.Code, resp.Status.Message, want)
	}
	if err := <-wrote; err != nil {
		return fmt.Errorf("write oversize body: %v", err)
	}

	payload, err := proto.Marshal(&types.StringValue{Value: "after-oversize"})
	if err != nil {
		return err
	}
	req, err := proto.Marshal(&ttrpc.Request{Service: interopService, Method: "Echo",
		Payload: payload})
	if err != nil {
		return err
	}
	if err := writeHeader(conn, uint32(len(req)), 3, 1, 0); err != nil {
		return err
	}
	if _, err := conn.Write(req); err != nil {
		return err
	}
	resp, err = readResponse(conn, 3)
	if err != nil {
		return fmt.Errorf("Echo after the oversize frame: %v", err)
	}
	if resp.Status != nil && resp.Status.Code != 0 {
		return fmt.Errorf("Echo after the oversize frame: code %d %q", resp.Status.Code,
			resp.Status.Message)
	}
	var sv types.StringValue
	if err := proto.Unmarshal(resp.Payload, &sv); err != nil {
		return err
	}
	if sv.Value != "after-oversize|md=" {
		return fmt.Errorf("Echo after the oversize frame: got %q", sv.Value)
	}
	return nil
}

// caseBigResponse asks for an answer larger than a frame may be. The C server
// answers RESOURCE_EXHAUSTED instead of sending it (include/ferry/ttrpc.h).
func caseBigResponse(socket string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := withTimeout(20 * time.Second)
	defer cancel()
	_, err = callString(ctx, c, "Big", "5000000")
	if err == nil {
		return fmt.Errorf("Big 5000000 succeeded")
	}
	if st, ok := status.FromError(err); !ok || st.Code() != codes.ResourceExhausted {
		return fmt.Errorf("Big 5000000: got %v, want code ResourceExhausted", err)
	}
	return expectEcho(c, "after-big")
}

func caseDeadlineExpiry(socket string) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := withTimeout(200 * time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = callString(ctx, c, "Sleep", "2000")
	elapsed := time.Since(start)
	if err == nil {
		return fmt.Errorf("Sleep 2000 with a 200 ms deadline succeeded")
	}
	// Locally the context expires; should the server's own DEADLINE_EXCEEDED answer
	// win the race it is the same code.
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
		return fmt.Errorf("got %v, want deadline exceeded", err)
	}
	if elapsed > 1500*time.Millisecond {
		return fmt.Errorf("the call took %v, the deadline was 200 ms", elapsed)
	}
	return expectEcho(c, "after-deadline")
}
