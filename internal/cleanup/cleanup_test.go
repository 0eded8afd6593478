package cleanup

import (
	"context"
	"errors"
	"reflect"
	"testing"
)

func TestRunNewestFirstAndJoinsErrors(t *testing.T) {
	var order []string
	s := New()
	boom := errors.New("boom")
	s.Add("a", func(context.Context) error { order = append(order, "a"); return nil })
	s.Add("b", func(context.Context) error { order = append(order, "b"); return boom })
	s.Add("c", func(context.Context) error { order = append(order, "c"); return nil })
	err := s.Run(context.Background())
	if !errors.Is(err, boom) {
		t.Fatalf("Run error = %v, want it to wrap boom", err)
	}
	if want := []string{"c", "b", "a"}; !reflect.DeepEqual(order, want) {
		t.Fatalf("order = %v, want %v", order, want)
	}
	if err := s.Run(context.Background()); err != nil || len(order) != 3 {
		t.Fatalf("second Run ran steps again: %v %v", err, order)
	}
}

func TestReleaseSkipsUndo(t *testing.T) {
	ran := false
	s := New()
	s.Add("x", func(context.Context) error { ran = true; return nil })
	s.Release()
	if err := s.Run(context.Background()); err != nil || ran {
		t.Fatalf("released stack ran: err=%v ran=%v", err, ran)
	}
}

func TestRunSurvivesCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var sawErr error
	s := New()
	s.Add("x", func(ctx context.Context) error { sawErr = ctx.Err(); return nil })
	_ = s.Run(ctx)
	if sawErr != nil {
		t.Fatalf("undo saw cancelled context: %v", sawErr)
	}
}
