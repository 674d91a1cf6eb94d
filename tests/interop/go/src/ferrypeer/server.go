package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The Go implementation of ferry.test.v1.Interop (proto/test/interop.proto). Count is
// server streaming, which ttrpc 1.1.1 cannot serve, so it stays unregistered (a call
// gets UNIMPLEMENTED "method Count").

func echo(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req types.StringValue
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	md, _ := ttrpc.GetMetadataValue(ctx, "x-test")
	return &types.StringValue{Value: req.Value + "|md=" + md}, nil
}

func deadline(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req types.Empty
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	dl, ok := ctx.Deadline()
	if !ok {
		return &types.StringValue{Value: "none"}, nil
	}
	return &types.StringValue{Value: strconv.FormatInt(time.Until(dl).Milliseconds(), 10)}, nil
}

func fail(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req types.StringValue
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	parts := strings.SplitN(req.Value, ":", 2)
	code, err := strconv.Atoi(parts[0])
	if err != nil || len(parts) != 2 {
		return nil, status.Errorf(codes.InvalidArgument, "Fail wants \"<code>:<message>\", got %q",
			req.Value)
	}
	return nil, status.Error(codes.Code(code), parts[1])
}

func sleep(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req types.StringValue
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	ms, err := strconv.Atoi(req.Value)
	if err != nil || ms < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "Sleep wants milliseconds, got %q", req.Value)
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return &types.StringValue{Value: req.Value}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func big(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req types.StringValue
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(req.Value)
	if err != nil || n < 0 || n > 64<<20 {
		return nil, status.Errorf(codes.InvalidArgument, "Big wants a byte count, got %q", req.Value)
	}
	return &types.StringValue{Value: strings.Repeat("x", n)}, nil
}

func serverMain(name string, args []string) error {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path to listen on")
	fs.Parse(args)
	if *socket == "" {
		return fmt.Errorf("-socket is required")
	}

	s, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	s.Register(interopService, map[string]ttrpc.Method{
		"Echo":     echo,
		"Deadline": deadline,
		"Fail":     fail,
		"Sleep":    sleep,
		"Big":      big,
	})

	os.Remove(*socket)
	l, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	defer os.Remove(*socket)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background(), l) }()
	fmt.Println("ready")

	select {
	case <-sigs:
		// Close stops listening and closes the connections; it does not wait for
		// handlers still sleeping.
		s.Close()
		<-served
		return nil
	case err := <-served:
		return err
	}
}
