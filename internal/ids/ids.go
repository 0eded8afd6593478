// Package ids makes resource identifiers: 24 lowercase base-36 characters,
// the first a letter, in the style of hypeman's CUID2 ids, so clients that
// display or prefix-match them behave the same. 120 bits of randomness make
// collisions a non-concern; prefix lookups resolve ambiguity explicitly.
package ids

import (
	"crypto/rand"
	"math/big"
)

const (
	Length   = 24
	alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
)

// New returns a fresh id.
func New() string {
	b := make([]byte, Length)
	b[0] = alphabet[randIntn(26)]
	for i := 1; i < Length; i++ {
		b[i] = alphabet[randIntn(len(alphabet))]
	}
	return string(b)
}

// Valid reports whether s has the shape of an id made by New.
func Valid(s string) bool {
	if len(s) != Length || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func randIntn(n int) int {
	v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		panic("ids: crypto/rand failed: " + err.Error()) // the kernel RNG does not fail on Linux ≥ 3.17
	}
	return int(v.Int64())
}
