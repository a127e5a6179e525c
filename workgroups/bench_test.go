package workgroups

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

func BenchmarkDecodeFrame(b *testing.B) {
	s := acceptedSession(b)
	for _, size := range []int{256, 64 << 10} {
		payload := bytes.Repeat([]byte("x"), size)
		frame, err := AppendFrame(nil, sampleHeader(b, s, payload), payload)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			r := bytes.NewReader(frame)
			for b.Loop() {
				r.Reset(frame)
				if _, _, err := DecodeFrame(r, FrameLimits{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncodeFrame(b *testing.B) {
	s := acceptedSession(b)
	payload := bytes.Repeat([]byte("x"), 256)
	h := sampleHeader(b, s, payload)
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendFrame(buf[:0], h, payload); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCheckSend(b *testing.B) {
	s := acceptedSession(b)
	h := sampleHeader(b, s, []byte("payload"))
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckSend(s, h, acmeAgent, 5, now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecideSend(b *testing.B) {
	a, err := NewAuthorizer()
	if err != nil {
		b.Fatal(err)
	}
	s := acceptedSession(b)
	h := sampleHeader(b, s, []byte("payload"))
	req := Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionSend, Resource: SessionResource(s), Context: EnvelopeContext(h, 5), At: t0}
	b.ReportAllocs()
	for b.Loop() {
		if !a.Decide(req).Allow {
			b.Fatal("denied")
		}
	}
}
