// Usage over the last hour, drawn with Chart.js (only the parts a line chart needs).
import {
  Chart,
  Filler,
  Legend,
  LineController,
  LineElement,
  LinearScale,
  PointElement,
  Tooltip,
} from "chart.js";

Chart.register(LineController, LineElement, PointElement, LinearScale, Legend, Tooltip, Filler);

const COLORS = { used: "#2563eb", total: "#94a3b8" };

// One chart per resource: "used" and "total" against minutes before now.
export function usageChart(canvas, title, unit) {
  return new Chart(canvas, {
    type: "line",
    data: {
      datasets: [
        { label: `used (${unit})`, data: [], borderColor: COLORS.used, backgroundColor: "rgba(37,99,235,0.15)", fill: true, pointRadius: 2, tension: 0.2 },
        { label: `total (${unit})`, data: [], borderColor: COLORS.total, borderDash: [6, 4], pointRadius: 0 },
      ],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      responsive: true,
      parsing: false,
      plugins: {
        title: { display: false, text: title },
        legend: { position: "bottom", labels: { boxWidth: 12 } },
        tooltip: { callbacks: { title: (items) => (items.length ? `${Math.abs(items[0].parsed.x).toFixed(1)} min ago` : "") } },
      },
      scales: {
        x: { type: "linear", min: -60, max: 0, title: { display: true, text: "minutes ago" }, ticks: { callback: (v) => `${-v}` } },
        y: { type: "linear", beginAtZero: true, title: { display: true, text: unit } },
      },
    },
  });
}

// ``points``: [{at (epoch s), used, total}], oldest first.
export function setUsage(chart, points, nowSeconds) {
  const toX = (at) => (at - nowSeconds) / 60;
  const recent = points.filter((p) => toX(p.at) >= -60);
  chart.data.datasets[0].data = recent.map((p) => ({ x: toX(p.at), y: p.used }));
  chart.data.datasets[1].data = recent.map((p) => ({ x: toX(p.at), y: p.total }));
  chart.update("none");
}
