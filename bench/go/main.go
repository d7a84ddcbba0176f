package main

import (
	"encoding/json"
	"flag"
	"net/http"

	"github.com/gin-gonic/gin"
	"ssebench/api"
)

type publishReq struct {
	Channel string `json:"channel"`
	Event   string `json:"event"`
	Data    any    `json:"data"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	broker := api.NewSSEBroker()
	engine.GET("/events", broker.Handler())
	engine.POST("/publish", func(c *gin.Context) {
		var req publishReq
		if err := json.NewDecoder(c.Request.Body).Decode(&req); err != nil {
			c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
			return
		}
		broker.Publish(req.Channel, req.Event, req.Data)
		c.JSON(http.StatusOK, gin.H{"ok": true})
	})
	if err := engine.Run(*addr); err != nil {
		panic(err)
	}
}
