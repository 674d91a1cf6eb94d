package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// bench-client: unary Echo over ONE connection with -concurrency goroutines each
// keeping one call in flight, for -duration. Prints
// "rps=<n> p50_us=<n> p99_us=<n> calls=<n> errors=<n>": calls counts successful
// calls, rps is calls per second of wall time (until the last call returned), and the
// percentiles are nearest-rank over the latencies of the successful calls. The C
// client (bench/ttrpc-bench.c) computes the same numbers the same way.

// percentile is the nearest rank: the smallest latency with at least percent% of all
// latencies at or below it.
func percentile(sorted []time.Duration, percent int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (percent*len(sorted) + 99) / 100
	if rank > 0 {
		rank--
	}
	return sorted[rank]
}

func benchClientMain(args []string) error {
	fs := flag.NewFlagSet("bench-client", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path of the server")
	concurrency := fs.Int("concurrency", 32, "calls kept in flight")
	duration := fs.Duration("duration", 3*time.Second, "how long to start new calls")
	payload := fs.Int("payload", 128, "bytes in the Echo request's string")
	fs.Parse(args)
	if *socket == "" || *concurrency < 1 || *payload < 0 {
		return fmt.Errorf("-socket is required, -concurrency must be >= 1")
	}

	c, err := dial(*socket)
	if err != nil {
		return err
	}
	defer c.Close()

	value := strings.Repeat("a", *payload)
	want := value + "|md="
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		latencies []time.Duration
		errs      int
	)
	start := time.Now()
	stop := start.Add(*duration)
	for g := 0; g < *concurrency; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1<<14)
			localErrs := 0
			for time.Now().Before(stop) {
				t0 := time.Now()
				got, err := callString(context.Background(), c, "Echo", value)
				if err != nil || got != want {
					localErrs++
					continue
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, local...)
			errs += localErrs
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	rps := float64(len(latencies)) / elapsed.Seconds()
	fmt.Printf("rps=%d p50_us=%d p99_us=%d calls=%d errors=%d\n", int64(rps+0.5),
		percentile(latencies, 50).Microseconds(), percentile(latencies, 99).Microseconds(),
		len(latencies), errs)
	return nil
}
