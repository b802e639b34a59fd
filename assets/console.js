// Starts asciinema-player on the session page from the data- attributes of
// #player (the page holds no inline script: the Content-Security-Policy
// forbids it). Terminal output is rendered by the player only.
(function () {
  'use strict';
  var el = document.getElementById('player');
  if (!el || typeof AsciinemaPlayer === 'undefined') { return; }
  var d = el.dataset;
  var opts = { fit: 'width', terminalFontSize: 'small' };
  var speed = parseFloat(d.speed);
  if (speed > 0) { opts.speed = speed; }
  var idle = parseFloat(d.idleTimeLimit);
  if (idle > 0) { opts.idleTimeLimit = idle; }
  var start = parseFloat(d.startAt);
  if (start > 0) {
    opts.startAt = start;
    opts.poster = 'npt:' + start;
  } else {
    opts.poster = 'npt:0:1';
  }
  if (d.markers) {
    try { opts.markers = JSON.parse(d.markers); } catch (e) { /* none */ }
  }
  var source = d.castUrl;
  if (d.liveUrl) {
    source = { driver: 'eventsource', url: d.liveUrl };
    opts.autoPlay = true;
    delete opts.poster;
    delete opts.startAt;
  }
  var player = AsciinemaPlayer.create(source, el, opts);
  window.portcullisPlayer = player;
  // Links with data-seek jump the player to their time.
  document.querySelectorAll('a[data-seek]').forEach(function (a) {
    a.addEventListener('click', function (ev) {
      var t = parseFloat(a.dataset.seek);
      if (!(t >= 0)) { return; }
      ev.preventDefault();
      player.seek(t).then(function () { el.dataset.seeked = String(t); });
    });
  });
})();
