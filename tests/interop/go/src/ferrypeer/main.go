// ferrypeer is the Go side of Ferry's ttrpc interop tests and benchmark. It is built
// offline in GOPATH mode against Debian's containerd/ttrpc 1.1.1 (unary only, gogo
// codec), see tests/interop/build-go.sh.
//
//	ferrypeer server -socket PATH        serve ferry.test.v1.Interop
//	ferrypeer client -socket PATH        run the Go-client battery, print TAP
//	ferrypeer bench-server -socket PATH  serve ferry.test.v1.Interop for the benchmark
//	ferrypeer bench-client -socket PATH -concurrency C -duration D -payload BYTES
package main

import (
	"fmt"
	"io/ioutil"
	"os"

	"github.com/sirupsen/logrus"
)

const interopService = "ferry.test.v1.Interop"

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s server|client|bench-server|bench-client -socket PATH [options]\n",
		os.Args[0])
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	// ttrpc logs dropped late answers ("received message for unknown channel") through
	// logrus; those are expected in the deadline cases and only go to stderr.
	if os.Getenv("FERRYPEER_VERBOSE") == "" {
		logrus.SetOutput(ioutil.Discard)
	}
	var err error
	switch os.Args[1] {
	case "server", "bench-server":
		err = serverMain(os.Args[1], os.Args[2:])
	case "client":
		err = clientMain(os.Args[2:])
	case "client-case":
		err = clientCaseMain(os.Args[2:])
	case "bench-client":
		err = benchClientMain(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
